"""CRD: Contrastive Representation Distillation (Tian et al., ICLR 2020), loss side."""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from models.util import Embed, Normalize

from .memory import ContrastMemory

__all__ = ["CRDLoss", "ContrastLoss", "Embed", "Normalize"]

eps = 1e-7


class CRDLoss(nn.Module):
    """Tian et al., ICLR 2020: NCE over a memory bank, with the student and teacher embedding heads.

    ``opt`` needs s_dim, t_dim (pooled feature sizes), feat_dim, nce_k, nce_t, nce_m and n_data.
    """

    def __init__(self, opt: SimpleNamespace):
        super().__init__()
        self.embed_s = Embed(opt.s_dim, opt.feat_dim)
        self.embed_t = Embed(opt.t_dim, opt.feat_dim)
        self.contrast = ContrastMemory(opt.feat_dim, opt.n_data, opt.nce_k, opt.nce_t, opt.nce_m)
        self.criterion_t = ContrastLoss(opt.n_data)
        self.criterion_s = ContrastLoss(opt.n_data)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, idx: torch.Tensor,
                contrast_idx: torch.Tensor | None = None) -> torch.Tensor:
        """f_s/f_t: (B, s_dim)/(B, t_dim) pooled features, idx: (B,) dataset indices,
        contrast_idx: (B, K+1) positive then negatives (None: uniform negatives). Returns shape [1]."""
        out_s, out_t = self.contrast(self.embed_s(f_s), self.embed_t(f_t), idx, contrast_idx)
        return self.criterion_s(out_s) + self.criterion_t(out_t)


class ContrastLoss(nn.Module):
    """Tian et al., ICLR 2020, Eq. 18: NCE loss with the positive in column 0 and noise Pn = 1/n_data."""

    def __init__(self, n_data: int):
        super().__init__()
        self.n_data = n_data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, K+1, 1) normalised scores. Returns shape [1]."""
        bsz = x.shape[0]
        m = x.size(1) - 1
        c = m * (1 / float(self.n_data))  # K * Pn
        p_pos = x.select(1, 0)  # (B, 1)
        log_d1 = torch.log(p_pos / (p_pos + (c + eps)))
        p_neg = x.narrow(1, 1, m)  # (B, K, 1)
        log_d0 = math.log(c) - torch.log(p_neg + (c + eps))  # log(c / (p + c + eps)), one op fewer on B*K
        return -(log_d1.sum(0) + log_d0.view(-1, 1).sum(0)) / bsz
