"""KD: Distilling the Knowledge in a Neural Network (Hinton et al., 2015)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, FlagGroup, register_distiller

LOGIT_STAND_HELP = ("z-score each sample's logits (student and teacher) before the temperature, in the KL term "
                    "(-a, every method) and in DKD's term: logit standardisation, Sun et al. CVPR 2024")


def z_score(logits: torch.Tensor) -> torch.Tensor:
    """LS (Sun et al., CVPR 2024): (B, C) logits z-scored per sample over the classes, as the authors: unbiased
    std (C - 1), 1e-7 added to the std. A constant row maps to zeros (a uniform softmax). For a constant student
    row (all C logits exactly equal) the gradient is the authors': finite (torch takes std's gradient at 0 as 0)
    but scaled by 1/1e-7, as the method's 1/std makes it for any near-constant row; not guarded."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (1e-7 + std)


class DistillKL(nn.Module):
    """Hinton et al. 2015: KL divergence between temperature-softened distributions, scaled by T^2.
    ``standardize``: on z-scored logits (LS); T is then LS's base temperature."""

    def __init__(self, T: float, standardize: bool = False):
        super().__init__()
        self.T = T
        self.standardize = standardize

    def forward(self, y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            y_s, y_t = z_score(y_s), z_score(y_t)
        log_p_s = F.log_softmax(y_s / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        return F.kl_div(log_p_s, p_t, reduction="sum") * self.T ** 2 / y_s.shape[0]


@register_distiller("kd")
class KDDistiller(Distiller):
    """Plain KD: the KL term (``-a/--alpha``) is computed by the loop for every method; no extra term.
    With --logit_stand it is KD+LS (the authors' CIFAR recipe: ``-r 0.1 -a 9 --kd_T 2``)."""
    paper_weights = "KD (Hinton et al. 2015): -r 0.1 -a 0.9 -b 0"

    uses_features = False
    has_term = False

    @classmethod
    def add_arguments(cls, group: FlagGroup) -> None:
        group.add_argument("--logit_stand", action="store_true", default=False, help=LOGIT_STAND_HELP)

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return logit_s.new_zeros(())
