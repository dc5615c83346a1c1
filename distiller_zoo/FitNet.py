"""FitNets: Hints for Thin Deep Nets (Romero et al., ICLR 2015)."""
from __future__ import annotations

import torch
from torch import nn

from models.util import ConvReg

from .base import Distiller, FlagGroup, MethodError, pair_name, register_distiller


class HintLoss(nn.Module):
    """FitNets (Romero et al., ICLR 2015): MSE between the regressed student hint and the teacher hint."""

    def __init__(self):
        super().__init__()
        self.crit = nn.MSELoss()

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        return self.crit(f_s, f_t)


@register_distiller("hint")
class HintDistiller(Distiller):
    """FitNets: a ConvReg maps the student's ``--hint_layer`` feature onto the teacher's."""
    paper_weights = "FitNet (Romero et al. 2015): -r 1 -a 0 -b 100"

    @classmethod
    def add_arguments(cls, group: FlagGroup) -> None:
        group.add_argument("--hint_layer", default=2, type=int, choices=[0, 1, 2, 3, 4],
                           help="which feature map gives the hint (0 = the stem's output)")

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.hint_layer = opt.hint_layer
        n_maps = min(len(feat_s), len(feat_t)) - 1  # the last feature is the pooled vector
        if not 0 <= self.hint_layer < n_maps:
            raise MethodError(
                f"--hint_layer {self.hint_layer} must select a 4-D feature map: {pair_name(opt)} have "
                f"{len(feat_s)} and {len(feat_t)} features of which the last is the pooled vector, so "
                f"use --hint_layer between 0 and {n_maps - 1}")
        self.regress = ConvReg(feat_s[self.hint_layer].shape, feat_t[self.hint_layer].shape)
        self.hint = HintLoss()

    def trainable_modules(self) -> list[nn.Module]:
        return [self.regress]

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return self.hint(self.regress(feat_s[self.hint_layer]), feat_t[self.hint_layer])
