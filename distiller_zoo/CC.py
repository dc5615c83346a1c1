"""CC: Correlation Congruence for Knowledge Distillation (Peng et al., ICCV 2019)."""
from __future__ import annotations

import torch
from torch import nn

from models.util import LinearEmbed

from .base import Distiller, FlagGroup, MethodError, pooled, register_distiller


class Correlation(nn.Module):
    """Peng et al., ICCV 2019, as in the authors' code: products of consecutive rows of |f_s - f_t|."""

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        delta = (f_s - f_t).abs()  # (B, D)
        return (delta[:-1] * delta[1:]).sum(1).mean()


@register_distiller("correlation")
class CCDistiller(Distiller):
    """CC on linear embeddings (``--feat_dim``) of the pooled features."""
    paper_weights = "CC (Peng et al. 2019): -r 1 -a 0 -b 0.02"

    @classmethod
    def add_arguments(cls, group: FlagGroup) -> None:
        group.add_argument("--feat_dim", default=128, type=int, help="embedding dimension (CC, CRD)")

    @classmethod
    def check_options(cls, opt) -> None:
        if opt.feat_dim <= 0:
            raise MethodError(f"--feat_dim must be positive, got {opt.feat_dim}")

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.embed_s = LinearEmbed(pooled(feat_s).shape[1], opt.feat_dim)
        self.embed_t = LinearEmbed(pooled(feat_t).shape[1], opt.feat_dim)
        self.correlation = Correlation()

    def trainable_modules(self) -> list[nn.Module]:
        return [self.embed_s, self.embed_t]

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return self.correlation(self.embed_s(pooled(feat_s)), self.embed_t(pooled(feat_t)))
