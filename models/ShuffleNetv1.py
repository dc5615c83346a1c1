"""ShuffleNet for CIFAR (Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural
Network for Mobile Devices", CVPR 2018).
"""
from __future__ import annotations

from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

Tensor = torch.Tensor


class ShuffleBlock(nn.Module):
    """Channel shuffle (Zhang et al., CVPR 2018): interleave the channels of ``groups`` groups."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        if self.groups == 1:
            return x
        n, c, h, w = x.shape
        # (N, g, C/g, H, W) -> (N, C/g, g, H, W): output channel j*g + i is input channel i*(C/g) + j
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    """ShuffleNet unit: grouped 1x1, shuffle, depthwise 3x3, grouped 1x1 (Zhang et al., 2018).

    Stride-2 units concatenate an average-pooled shortcut instead of adding it.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, is_last: bool = False):
        super().__init__()
        self.is_last = is_last
        self.stride = stride
        mid_planes = int(out_planes / 4)
        g = 1 if in_planes == 24 else groups  # the 24-channel stem output is not grouped
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1,
                               groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        out = F.relu(preact)
        return (out, preact) if self.is_last else out


class ShuffleNetConfig(TypedDict):
    out_planes: list[int]
    num_blocks: list[int]
    groups: int


class ShuffleNet(nn.Module):
    """ShuffleNet (v1) on 32x32 inputs (Zhang et al., CVPR 2018)."""

    def __init__(self, cfg: ShuffleNetConfig, num_classes: int = 10):
        super().__init__()
        out_planes = cfg["out_planes"]
        num_blocks = cfg["num_blocks"]
        groups = cfg["groups"]

        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        if num_blocks < 1:
            raise ValueError(f"every stage needs at least one block, got {num_blocks}")
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            # The first unit concatenates its input, so its branch only produces the difference.
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(Bottleneck(self.in_planes, out_planes - cat_planes, stride=stride,
                                     groups=groups, is_last=(i == num_blocks - 1)))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        raise NotImplementedError('ShuffleNet currently is not supported for "Overhaul" teacher')

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False
                ) -> Tensor | tuple[list[Tensor], Tensor]:
        f0 = F.relu(self.bn1(self.conv1(x)), inplace=True)
        f1, f1_pre = self.layer1(f0)
        f2, f2_pre = self.layer2(f1)
        f3, f3_pre = self.layer3(f2)
        f4 = F.avg_pool2d(f3, 4).flatten(1)
        logits = self.linear(f4)
        if not is_feat:
            return logits
        if preact:
            return [f0, f1_pre, f2_pre, f3_pre, f4], logits
        return [f0, f1, f2, f3, f4], logits


@register_model("ShuffleV1")
def ShuffleV1(**kwargs: Any) -> ShuffleNet:
    cfg: ShuffleNetConfig = {"out_planes": [240, 480, 960], "num_blocks": [4, 8, 4], "groups": 3}
    return ShuffleNet(cfg, **kwargs)
