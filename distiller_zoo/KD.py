"""KD: Distilling the Knowledge in a Neural Network (Hinton et al., 2015)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, register_distiller


class DistillKL(nn.Module):
    """Hinton et al. 2015: KL divergence between temperature-softened distributions, scaled by T^2."""

    def __init__(self, T: float):
        super().__init__()
        self.T = T

    def forward(self, y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        log_p_s = F.log_softmax(y_s / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        return F.kl_div(log_p_s, p_t, reduction="sum") * self.T ** 2 / y_s.shape[0]


@register_distiller("kd")
class KDDistiller(Distiller):
    """Plain KD: the KL term (``-a/--alpha``) is computed by the loop for every method; no extra term."""

    uses_features = False
    has_term = False

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return logit_s.new_zeros(())
