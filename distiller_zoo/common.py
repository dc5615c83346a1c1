"""Tensor helpers shared by several losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def match_sizes(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two (B, C, H, H) maps down to the other's height (square maps)."""
    h_a, h_b = a.shape[2], b.shape[2]
    if h_a > h_b:
        a = F.adaptive_avg_pool2d(a, (h_b, h_b))
    elif h_a < h_b:
        b = F.adaptive_avg_pool2d(b, (h_a, h_a))
    return a, b
