"""FSP: A Gift from Knowledge Distillation (Yim et al., CVPR 2017)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Distiller, register_distiller, spatial, total
from .common import match_sizes


class FSP(nn.Module):
    """Yim et al., CVPR 2017: match the flow (Gram) matrices between consecutive layers."""

    def __init__(self, s_shapes: Sequence[Sequence[int]], t_shapes: Sequence[Sequence[int]]):
        super().__init__()
        assert len(s_shapes) == len(t_shapes), "unequal length of feat list"
        if [s[1] for s in s_shapes] != [t[1] for t in t_shapes]:
            raise ValueError("num of channels not equal (error in FSP)")

    def forward(self, g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> list[torch.Tensor]:
        s_fsp = self.compute_fsp(g_s)
        t_fsp = self.compute_fsp(g_t)
        return [(s - t).pow(2).mean() for s, t in zip(s_fsp, t_fsp)]

    @staticmethod
    def compute_fsp(g: list[torch.Tensor]) -> list[torch.Tensor]:
        """(B, C_top, C_bot) matrices mean_hw top[b, j, hw] * bot[b, i, hw] for consecutive layers."""
        fsp_list = []
        for bot, top in zip(g[:-1], g[1:]):
            bot, top = match_sizes(bot, top)
            bot = bot.flatten(2)  # (B, C_bot, HW)
            top = top.flatten(2)  # (B, C_top, HW)
            fsp_list.append(torch.bmm(top, bot.transpose(1, 2)) / bot.shape[2])
        return fsp_list


@register_distiller("fsp")
class FSPDistiller(Distiller):
    """FSP as an initialisation method: the init stage trains the student's feature layers; the main
    stage adds no term (plain CE + KD)."""
    paper_weights = "FSP (Yim et al. 2017): -r 1 -a 0 -b 50, with an init stage"

    has_init_stage = True

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.require_same_depth(opt, feat_s, feat_t)
        self.require_same_channels(opt, spatial(feat_s), spatial(feat_t),
                                   "FSP matrices are C_top x C_bot; the paper marks such pairs N/A")
        self.fsp = FSP([f.shape for f in spatial(feat_s)], [f.shape for f in spatial(feat_t)])

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        return logit_s.new_zeros(())

    def init_modules(self, model_s: nn.Module) -> list[nn.Module]:
        return [model_s.get_feat_modules()]

    def init_loss(self, feat_s, feat_t) -> torch.Tensor:
        return total(self.fsp(spatial(feat_s), spatial(feat_t)))
