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


def poly_kernel_means(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """poly_kernel_mean of (t, t), (s, s) and (s, t) for (B, C, HW) inputs, by the cheaper of two exact routes:
    the (C, C) Gram matrices, or, where the maps are small next to the channel count (the last stage: 8 x 8
    maps of 256 channels), the (HW, HW) ones, since sum_ij <a_i, b_j>^2 = <A^T A, B^T B>_F."""
    batch, c_s, hw = f_s.shape
    c_t = f_t.shape[1]
    if hw * (c_s + c_t) >= c_s * c_s + c_t * c_t + c_s * c_t:
        return poly_kernel_mean(f_t, f_t), poly_kernel_mean(f_s, f_s), poly_kernel_mean(f_s, f_t)
    gram_s = torch.bmm(f_s.transpose(1, 2), f_s)  # (B, HW, HW)
    gram_t = torch.bmm(f_t.transpose(1, 2), f_t)
    return (gram_t.pow(2).sum() / (batch * c_t * c_t), gram_s.pow(2).sum() / (batch * c_s * c_s),
            (gram_s * gram_t).sum() / (batch * c_s * c_t))


class NSTLoss(nn.Module):
    """Huang & Wang, 2017: squared MMD with a degree-2 polynomial kernel between channel activations."""

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.nst_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    @staticmethod
    def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = match_sizes(f_s, f_t)
        f_s = F.normalize(f_s.flatten(2), dim=2)  # (B, C_s, HW)
        f_t = F.normalize(f_t.flatten(2), dim=2)  # (B, C_t, HW)
        k_tt, k_ss, k_st = poly_kernel_means(f_s, f_t)
        return k_tt.detach() + k_ss - 2 * k_st


@register_distiller("nst")
class NSTDistiller(Distiller):
    """NST on every block output."""
    paper_weights = "NST (Huang & Wang 2017): -r 1 -a 0 -b 50"

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.require_same_depth(opt, feat_s, feat_t)
        self.nst = NSTLoss()

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return total(self.nst(middle(feat_s), middle(feat_t)))
