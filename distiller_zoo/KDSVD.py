"""KDSVD: Self-supervised Knowledge Distillation Using Singular Value Decomposition (Lee et al., ECCV 2018)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, middle, register_distiller, total


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class KDSVD(nn.Module):
    """Lee et al., ECCV 2018: match RBF correlations of leading right singular vectors between layers."""

    def __init__(self, k: int = 1):
        super().__init__()
        self.k = k

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        v_sb = v_tb = None
        losses = []
        for i, (f_s, f_t) in enumerate(zip(g_s, g_t)):
            _, s_t, v_t = self.svd(f_t, self.k)
            _, _, v_s = self.svd(f_s, self.k + 3)
            v_s, v_t = self.align_rsv(v_s, v_t)
            s_t = s_t.unsqueeze(1)  # (B, 1, k)
            v_t = v_t * s_t  # (B, C, k)
            v_s = v_s * s_t
            if i > 0:
                s_rbf = torch.exp(-(v_s.unsqueeze(2) - v_sb.unsqueeze(1)).pow(2) / 8)  # (B, C_i, C_i-1, k)
                t_rbf = torch.exp(-(v_t.unsqueeze(2) - v_tb.unsqueeze(1)).pow(2) / 8)
                losses.append(_finite_or_zero((s_rbf - t_rbf.detach()).pow(2)).sum())
            v_tb, v_sb = v_t, v_s
        bsz = g_s[0].shape[0]
        return [loss / bsz for loss in losses]

    @staticmethod
    def svd(feat: torch.Tensor, n: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reduced SVD of the (B, HW, C) feature matrix, keeping (and normalising) the first n triplets."""
        size = feat.shape
        assert len(size) == 4, "KDSVD expects (B, C, H, W) feature maps"
        x = feat.view(-1, size[1], size[2] * size[2]).transpose(-2, -1)
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        u, s, v = _finite_or_zero(u), _finite_or_zero(s), _finite_or_zero(vh.transpose(-2, -1))
        if n > 0:
            u = F.normalize(u[:, :, :n], dim=1)
            s = F.normalize(s[:, :n], dim=1)
            v = F.normalize(v[:, :, :n], dim=1)
        return u, s, v

    @staticmethod
    def align_rsv(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick (with sign) the column of a most aligned with each column of b: (B, C, n_a) -> (B, C, n_b)."""
        cosine = a.transpose(-2, -1) @ b  # (B, n_a, n_b)
        max_abs_cosine, _ = cosine.abs().max(1, keepdim=True)
        mask = torch.where(max_abs_cosine == cosine.abs(), torch.sign(cosine), torch.zeros_like(cosine))
        return a @ mask, b


@register_distiller("kdsvd")
class KDSVDDistiller(Distiller):
    """KDSVD on every block output (student and teacher must have equal widths)."""
    paper_weights = "KDSVD (Lee et al. 2018): not in the paper's table"

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.require_same_depth(opt, feat_s, feat_t)
        self.require_same_channels(opt, middle(feat_s), middle(feat_t),
                                   "singular vectors of student and teacher are compared entry by entry")
        self.kdsvd = KDSVD()

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return total(self.kdsvd(middle(feat_s), middle(feat_t)))
