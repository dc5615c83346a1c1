"""VID: Variational Information Distillation for Knowledge Transfer (Ahn et al., CVPR 2019)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Distiller, middle, register_distiller, total
from .common import match_sizes


def _conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=1, padding=0, bias=False)


class VIDLoss(nn.Module):
    """Ahn et al., CVPR 2019: Gaussian negative log-likelihood of the teacher feature given the student's."""

    def __init__(self, num_input_channels: int, num_mid_channel: int, num_target_channels: int,
                 init_pred_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.regressor = nn.Sequential(
            _conv1x1(num_input_channels, num_mid_channel), nn.ReLU(),
            _conv1x1(num_mid_channel, num_mid_channel), nn.ReLU(),
            _conv1x1(num_mid_channel, num_target_channels))
        # Inverse of log(1 + exp(x)) + eps at init_pred_var, in float64 before rounding to float32.
        inverse_softplus = math.log(math.exp(init_pred_var - eps) - 1.0)
        self.log_scale = nn.Parameter(torch.full((num_target_channels,), inverse_softplus))
        self.eps = eps

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        input, target = match_sizes(input, target)
        pred_mean = self.regressor(input)
        pred_var = torch.log(1.0 + torch.exp(self.log_scale)) + self.eps
        pred_var = pred_var.view(1, -1, 1, 1)
        neg_log_prob = 0.5 * ((pred_mean - target) ** 2 / pred_var + torch.log(pred_var))
        return neg_log_prob.mean()


@register_distiller("vid")
class VIDDistiller(Distiller):
    """VID on every block output, one trainable VIDLoss (regressor + variance) per layer."""
    paper_weights = "VID (Ahn et al. 2019): -r 1 -a 0 -b 1"

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.require_same_depth(opt, feat_s, feat_t)
        self.vid = nn.ModuleList(
            VIDLoss(f_s.shape[1], f_t.shape[1], f_t.shape[1]) for f_s, f_t in zip(middle(feat_s), middle(feat_t)))

    def trainable_modules(self) -> list[nn.Module]:
        return [self.vid]

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return total([vid(f_s, f_t) for vid, f_s, f_t in zip(self.vid, middle(feat_s), middle(feat_t))])
