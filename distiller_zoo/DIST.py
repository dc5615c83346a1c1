"""DIST: Knowledge Distillation from A Stronger Teacher (Huang et al., NeurIPS 2022), as the authors' dist_kd.py."""
from __future__ import annotations

import torch
from torch import nn

from .base import Distiller, FlagGroup, MethodError, register_distiller


def cosine_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise cosine of two (N, M) matrices; eps is added to the product of the norms (not F's per-norm clamp)."""
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def pearson_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(N, M), (N, M) -> (N,): each row's correlation; a constant row correlates 0."""
    return cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)


def inter_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """1 - mean over samples of the correlation across the classes."""
    return 1 - pearson_correlation(y_s, y_t).mean()


def intra_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """1 - mean over classes of the correlation across the batch."""
    return inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


class DIST(nn.Module):
    """beta*tau^2*inter + gamma*tau^2*intra on softmax(z / tau) of (B, C) logits."""

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0):
        super().__init__()
        self.beta, self.gamma, self.tau = beta, gamma, tau

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        y_s = (z_s / self.tau).softmax(dim=1)
        y_t = (z_t / self.tau).softmax(dim=1)
        inter_loss = self.tau ** 2 * inter_class_relation(y_s, y_t)
        intra_loss = self.tau ** 2 * intra_class_relation(y_s, y_t)
        return self.beta * inter_loss + self.gamma * intra_loss


@register_distiller("dist")
class DISTDistiller(Distiller):
    """DIST on the logits; the authors' CIFAR-100 recipe is ``-r 1 -a 0 -b 2`` (their kd_loss_weight) with
    tau 4. The intra-class term correlates each class over the batch: a batch of one sample (a last partial
    batch) gives it no information, so it is the constant gamma*tau^2 there (finite, no gradient), and
    ``--batch_size 1`` is refused. The logits are not standardised under --logit_stand (the LS authors wire it
    to KD and DKD only); that flag changes only the KL term, so ``--logit_stand`` with ``-a 0`` is refused."""
    paper_weights = "DIST (Huang et al. 2022): -r 1 -a 0 -b 2"

    uses_features = False

    @classmethod
    def add_arguments(cls, group: FlagGroup) -> None:
        group.add_argument("--dist_beta", type=float, default=1.0, help="weight of the inter-class relation")
        group.add_argument("--dist_gamma", type=float, default=1.0, help="weight of the intra-class relation")
        group.add_argument("--dist_tau", type=float, default=4.0, help="DIST's temperature (CIFAR 4, ImageNet 1)")

    @classmethod
    def check_options(cls, opt) -> None:
        if opt.dist_tau <= 0:
            raise MethodError(f"--dist_tau must be positive, got {opt.dist_tau}")
        for flag in ("dist_beta", "dist_gamma"):
            if getattr(opt, flag) < 0:
                raise MethodError(f"--{flag} must not be negative, got {getattr(opt, flag)}")
        if opt.batch_size < 2:
            raise MethodError(f"--distill dist needs --batch_size of at least 2 (its intra-class term correlates "
                              f"each class over the batch), got {opt.batch_size}")
        if opt.logit_stand and opt.alpha == 0:
            raise MethodError("--logit_stand standardises the logits of the KL term (-a) and of DKD, not DIST's "
                              "(as the LS authors); with -a 0 it would change nothing: drop it or set -a")

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.dist = DIST(opt.dist_beta, opt.dist_gamma, opt.dist_tau)

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return self.dist(logit_s, logit_t)
