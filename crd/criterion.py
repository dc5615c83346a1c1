"""CRD: Contrastive Representation Distillation (Tian et al., ICLR 2020), loss side."""
from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import nn

from models.util import Embed, Normalize

from .memory import ContrastMemory, LogScores

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
        scores_s, scores_t = self.contrast.log_scores(self.embed_s(f_s), self.embed_t(f_t), idx, contrast_idx)
        return self.criterion_s.from_log(scores_s) + self.criterion_t.from_log(scores_t)

    def snapshot(self, idx: torch.Tensor) -> Callable[[], None]:
        """ContrastMemory.snapshot: call before a forward with dataset indices ``idx``; the returned function
        undoes that forward's writes to the memory bank (for a step dropped over a non-finite loss)."""
        return self.contrast.snapshot(idx)


class ContrastLoss(nn.Module):
    """Tian et al., ICLR 2020, Eq. 18: NCE loss with the positive in column 0 and noise Pn = 1/n_data."""

    def __init__(self, n_data: int):
        super().__init__()
        self.n_data = n_data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, K+1, 1) normalised scores. Returns shape [1]."""
        return self.from_log(LogScores(torch.log(x.view(x.shape[0], -1)), 0.0))

    def from_log(self, scores: LogScores) -> torch.Tensor:
        """The same loss from the scores' logarithms. Returns shape [1].

        With s = log x - log(c + eps), c = K * Pn: the positive's log(x / (x + c + eps)) = s - softplus(s) and
        a negative's log(c / (x + c + eps)) = log(c / (c + eps)) - softplus(s), so a row sums to
        s_pos - sum_k softplus(s_k) + K log(c / (c + eps)): one pass over the scores (and one back), where
        the original takes an exp, a division, an addition and two logarithms.
        """
        bsz, m = scores.logits.shape[0], scores.logits.shape[1] - 1
        c = m * (1 / float(self.n_data))  # K * Pn
        total = _PositiveMinusSoftplus.apply(scores.logits, scores.log_z + math.log(c + eps))
        return (-(total + bsz * m * math.log(c / (c + eps))) / bsz).reshape(1)


class _PositiveMinusSoftplus(torch.autograd.Function):
    """sum_b s[b, 0] - sum_{b,k} softplus(s[b, k]) for s = logits - offset, (B, K+1) -> scalar.

    exp then log1p in place, and a backward of one in-place sigmoid pass: fewer passes over, and fewer
    allocations of, the (B, K+1) scores than autograd through softplus (timings: BENCHMARKS.md, "CRD memory
    kernels"). exp overflows (to an infinite loss) where the original's exp(score / T) does.
    """

    @staticmethod
    def forward(ctx, logits, offset):
        ctx.save_for_backward(logits)
        ctx.offset = offset
        s = logits - offset
        return s[:, 0].sum() - s.exp_().log1p_().sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, = ctx.saved_tensors
        d_logits = (logits - ctx.offset).sigmoid_().mul_(-grad)  # d(-softplus(s))/ds = -sigmoid(s)
        d_logits[:, 0] += grad
        return d_logits, None
