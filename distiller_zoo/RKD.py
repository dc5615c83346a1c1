"""RKD: Relational Knowledge Distillation (Park et al., CVPR 2019)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, pooled, register_distiller


def pdist(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """(B, D) -> (B, B) pairwise Euclidean distances with a zero diagonal."""
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    res = res.clone()
    res.fill_diagonal_(0)  # not res[range(B), range(B)]: that index list is a blocking host-to-device copy
    return res


def _normalized_distances(e: torch.Tensor) -> torch.Tensor:
    d = pdist(e)
    # The mean of the positive entries (only the diagonal is 0) without d[d > 0], whose nonzero() syncs a GPU.
    return d / (d.sum() / (d > 0).sum())


def _angles(e: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B*B*B,) cosines of the angle at i between j and k: <n(e_j - e_i), n(e_k - e_i)>."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # (B, B, D)
    return torch.bmm(diff, diff.transpose(1, 2)).view(-1)


class RKDLoss(nn.Module):
    """Park et al., CVPR 2019: distance-wise and angle-wise relational losses."""

    def __init__(self, w_d: float = 25, w_a: float = 50):
        super().__init__()
        self.w_d = w_d
        self.w_a = w_a

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        student = f_s.view(f_s.shape[0], -1)
        teacher = f_t.view(f_t.shape[0], -1)
        with torch.no_grad():
            t_d = _normalized_distances(teacher)
            t_angle = _angles(teacher)
        loss_d = F.smooth_l1_loss(_normalized_distances(student), t_d)
        loss_a = F.smooth_l1_loss(_angles(student), t_angle)
        return self.w_d * loss_d + self.w_a * loss_a


@register_distiller("rkd")
class RKDDistiller(Distiller):
    """RKD on the pooled features."""
    paper_weights = "RKD (Park et al. 2019): -r 1 -a 0 -b 1"

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.rkd = RKDLoss()

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return self.rkd(pooled(feat_s), pooled(feat_t))
