"""NST: Like What You Like: Knowledge Distill via Neuron Selectivity Transfer (Huang & Wang, 2017)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, middle, register_distiller, total
from .common import match_sizes


def poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over (n, j, i) of <a[n, i], b[n, j]>^2 for (B, C, HW) inputs, via a batched Gram matrix."""
    return torch.bmm(b, a.transpose(1, 2)).pow(2).mean()


class NSTLoss(nn.Module):
    """Huang & Wang, 2017: squared MMD with a degree-2 polynomial kernel between channel activations."""

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.nst_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    @staticmethod
    def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = match_sizes(f_s, f_t)
        f_s = F.normalize(f_s.flatten(2), dim=2)  # (B, C_s, HW)
        f_t = F.normalize(f_t.flatten(2), dim=2)  # (B, C_t, HW)
        return (poly_kernel_mean(f_t, f_t).detach() + poly_kernel_mean(f_s, f_s)
                - 2 * poly_kernel_mean(f_s, f_t))


@register_distiller("nst")
class NSTDistiller(Distiller):
    """NST on every block output."""

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.require_same_depth(opt, feat_s, feat_t)
        self.nst = NSTLoss()

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return total(self.nst(middle(feat_s), middle(feat_t)))
