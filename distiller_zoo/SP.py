"""SP: Similarity-Preserving Knowledge Distillation (Tung & Mori, ICCV 2019)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, penultimate, register_distiller, total


class Similarity(nn.Module):
    """Tung & Mori, ICCV 2019: match the row-normalised batch similarity (Gram) matrices."""

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.similarity_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    @staticmethod
    def similarity_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        bsz = f_s.shape[0]
        f_s = f_s.view(bsz, -1)
        f_t = f_t.view(bsz, -1)
        G_s = F.normalize(f_s @ f_s.t())  # (B, B)
        G_t = F.normalize(f_t @ f_t.t())
        # Shape [1], as the original.
        return (G_t - G_s).pow(2).view(-1, 1).sum(0) / (bsz * bsz)


@register_distiller("similarity")
class SPDistiller(Distiller):
    """SP on the last feature map."""
    paper_weights = "SP (Tung & Mori 2019): -r 1 -a 0 -b 3000"

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.similarity = Similarity()

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return total(self.similarity([penultimate(feat_s)], [penultimate(feat_t)]))
