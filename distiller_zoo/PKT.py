"""PKT: Learning Deep Representations with Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018)."""
from __future__ import annotations

import torch
from torch import nn

from .base import Distiller, pooled, register_distiller


def _conditional_probabilities(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, D) -> (B, B): cosine-similarity kernel mapped to [0, 1], rows normalised to sum to 1."""
    x = x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)
    x = x.masked_fill(torch.isnan(x), 0.0)  # as the original: NaN (from non-finite inputs) -> 0, inf kept
    similarity = (x @ x.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


class PKT(nn.Module):
    """Passalis & Tefas, ECCV 2018: KL between the student's and teacher's cosine-kernel probabilities."""

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        return self.cosine_similarity_loss(f_s, f_t)

    @staticmethod
    def cosine_similarity_loss(output_net: torch.Tensor, target_net: torch.Tensor,
                               eps: float = 1e-7) -> torch.Tensor:
        p_s = _conditional_probabilities(output_net, eps)
        p_t = _conditional_probabilities(target_net, eps)
        return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))


@register_distiller("pkt")
class PKTDistiller(Distiller):
    """PKT on the pooled features."""
    paper_weights = "PKT (Passalis & Tefas 2018): -r 1 -a 0 -b 30000"

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.pkt = PKT()

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return self.pkt(pooled(feat_s), pooled(feat_t))
