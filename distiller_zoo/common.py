"""Tensor helpers shared by several losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import MethodError


def match_sizes(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two (B, C, H, H) maps down to the other's height (square maps)."""
    h_a, h_b = a.shape[2], b.shape[2]
    if h_a > h_b:
        a = pool_to(a, h_b)
    elif h_a < h_b:
        b = pool_to(b, h_a)
    return a, b


def pool_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size) by the original's adaptive average pooling.

    Where size divides H and W (every pair of the zoo on 32x32 images: all its maps are 2^k wide) the
    adaptive windows are the non-overlapping (H/size, W/size) tiles, so avg_pool2d with kernel = stride gives
    the same numbers, with a CUDA backward that --deterministic accepts (adaptive pooling's has none).
    """
    height, width = x.shape[2], x.shape[3]
    if size == 1:  # what adaptive pooling itself computes for a (1, 1) target
        return x.mean((2, 3), keepdim=True)
    if height % size == 0 and width % size == 0:
        kernel = (height // size, width // size)
        return F.avg_pool2d(x, kernel, stride=kernel)
    if _adaptive_backward_is_refused(x):
        # torch would only fail in the backward, naming a kernel; say here what the user can change.
        raise MethodError(
            f"--deterministic cannot match a feature map of shape {tuple(x.shape)} to {size}x{size}: "
            f"{height}x{width} does not pool evenly to {size}x{size}, and the adaptive average pooling the "
            f"original uses for such sizes has no deterministic CUDA backward. Train without --deterministic, "
            f"or use a teacher and student whose map sizes divide each other (all pairs of the model zoo on "
            f"32x32 images do)")
    return F.adaptive_avg_pool2d(x, (size, size))


def _adaptive_backward_is_refused(x: torch.Tensor) -> bool:
    """Whether torch.use_deterministic_algorithms(True) (not warn_only) will refuse the backward of an
    adaptive average pooling of x: a CUDA kernel without a deterministic version."""
    return (x.is_cuda and x.requires_grad and torch.is_grad_enabled()
            and torch.are_deterministic_algorithms_enabled()
            and not torch.is_deterministic_algorithms_warn_only_enabled())
