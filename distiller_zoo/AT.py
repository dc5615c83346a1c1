"""AT: Paying More Attention to Attention (Zagoruyko & Komodakis, ICLR 2017)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, middle, register_distiller, total
from .common import match_sizes


class Attention(nn.Module):
    """Zagoruyko & Komodakis, ICLR 2017: match normalised spatial attention maps, one loss per layer."""

    def __init__(self, p: int = 2):
        super().__init__()
        self.p = p

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.at_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    def at_loss(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = match_sizes(f_s, f_t)
        return (self.at(f_s) - self.at(f_t)).pow(2).mean()

    def at(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f.pow(self.p).mean(1).view(f.size(0), -1))  # (B, H*W)


@register_distiller("attention")
class ATDistiller(Distiller):
    """AT on every block output."""
    paper_weights = "AT (Zagoruyko & Komodakis 2017): -r 1 -a 0 -b 1000"

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.require_same_depth(opt, feat_s, feat_t)
        self.attention = Attention()

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return total(self.attention(middle(feat_s), middle(feat_t)))
