"""AB: Knowledge Transfer via Distillation of Activation Boundaries (Heo et al., AAAI 2019)."""
from __future__ import annotations

import torch
from torch import nn

from models.util import Connector

from .base import Distiller, middle, register_distiller, total


class ABLoss(nn.Module):
    """Heo et al., AAAI 2019: margin loss on the sign of pre-ReLU activations, deeper layers weigh more."""

    def __init__(self, feat_num: int, margin: float = 1.0):
        super().__init__()
        self.w = [2 ** (i - feat_num + 1) for i in range(feat_num)]
        self.margin = margin

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        bsz = g_s[0].shape[0]
        losses = [self.criterion_alternative_l2(s, t, self.margin) for s, t in zip(g_s, g_t)]
        losses = [w * loss for w, loss in zip(self.w, losses)]
        losses = [loss / bsz for loss in losses]
        return [loss / 1000 * 3 for loss in losses]

    @staticmethod
    def criterion_alternative_l2(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
        loss = ((source + margin) ** 2 * ((source > -margin) & (target <= 0)).float()
                + (source - margin) ** 2 * ((source <= margin) & (target > 0)).float())
        return torch.abs(loss).sum()


@register_distiller("abound")
class ABDistiller(Distiller):
    """AB as an initialisation method: the init stage trains a connector and the student's feature layers
    on pre-activation block outputs; the main stage adds no term (plain CE + KD)."""
    paper_weights = "AB (Heo et al. 2019): -r 1 -a 0 -b 1, with an init stage"

    student_preact = teacher_preact = True
    has_init_stage = True

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.require_same_depth(opt, feat_s, feat_t)
        s_shapes = [f.shape for f in middle(feat_s)]
        t_shapes = [f.shape for f in middle(feat_t)]
        self.connector = Connector(s_shapes, t_shapes)
        self.ab = ABLoss(len(s_shapes))

    def frozen_modules(self) -> list[nn.Module]:
        return [self.connector]

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return logit_s.new_zeros(())

    def init_modules(self, model_s: nn.Module) -> list[nn.Module]:
        return [self.connector, model_s.get_feat_modules()]

    def init_loss(self, feat_s, feat_t) -> torch.Tensor:
        return total(self.ab(self.connector(middle(feat_s)), middle(feat_t)))
