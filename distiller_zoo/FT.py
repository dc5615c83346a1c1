"""FT: Paraphrasing Complex Network: Network Compression via Factor Transfer (Kim et al., NeurIPS 2018)."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from models.util import Paraphraser, Translator

from .base import Distiller, penultimate, register_distiller
from .common import match_sizes

LOG = logging.getLogger(__name__)

# Students whose paraphraser init stage runs at lr 0.01 (the original's rule, keyed on the student name).
SMALL_INIT_LR_STUDENTS = frozenset({
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
    "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"})
SMALL_INIT_LR = 0.01


class FactorTransfer(nn.Module):
    """Kim et al., NeurIPS 2018: L1 (p2=1) distance between normalised student and teacher factors."""

    def __init__(self, p1: int = 2, p2: int = 1):
        super().__init__()
        self.p1 = p1
        self.p2 = p2

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = match_sizes(f_s, f_t)
        diff = self.factor(f_s) - self.factor(f_t)
        if self.p2 == 1:
            return diff.abs().mean()
        return diff.pow(self.p2).mean()

    def factor(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f.pow(self.p1).mean(1).view(f.size(0), -1))  # (B, H*W)


@register_distiller("factor")
class FTDistiller(Distiller):
    """FT: the init stage trains the paraphraser (teacher auto-encoder); the main stage trains a
    translator so the student's factor matches the frozen paraphraser's factor of the teacher."""
    paper_weights = "FT (Kim et al. 2018): -r 1 -a 0 -b 200, with an init stage"

    has_init_stage = True

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        s_shape, t_shape = penultimate(feat_s).shape, penultimate(feat_t).shape
        self.paraphraser = Paraphraser(t_shape)
        self.translator = Translator(s_shape, t_shape)
        self.factor_transfer = FactorTransfer()

    def trainable_modules(self) -> list[nn.Module]:
        return [self.translator]

    def frozen_modules(self) -> list[nn.Module]:
        return [self.paraphraser]

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        with torch.no_grad():
            factor_t = self.paraphraser(penultimate(feat_t), is_factor=True)
        return self.factor_transfer(self.translator(penultimate(feat_s)), factor_t)

    def init_modules(self, model_s: nn.Module) -> list[nn.Module]:
        return [self.paraphraser]

    def init_learning_rate(self, opt) -> float:
        if opt.model_s in SMALL_INIT_LR_STUDENTS:
            LOG.info(f"factor init stage: learning rate {SMALL_INIT_LR} for student {opt.model_s} "
                     f"(instead of {opt.learning_rate}), as in the original")
            return SMALL_INIT_LR
        return opt.learning_rate

    def init_loss(self, feat_s, feat_t) -> torch.Tensor:
        f_t = penultimate(feat_t)
        _, reconstruction = self.paraphraser(f_t)
        return F.mse_loss(reconstruction, f_t)
