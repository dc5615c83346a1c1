"""Wide Residual Networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016)."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

Tensor = torch.Tensor


class BasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3 twice, plus a shortcut (Zagoruyko & Komodakis, 2016)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropRate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.droprate = dropRate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        # A projection shortcut sees the activated input, an identity one the raw input.
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A group of ``nb_layers`` WRN blocks; only the first one changes width or stride."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, block: type[BasicBlock],
                 stride: int, dropRate: float = 0.0):
        super().__init__()
        self.layer = self._make_layer(block, in_planes, out_planes, nb_layers, stride, dropRate)

    @staticmethod
    def _make_layer(block: type[BasicBlock], in_planes: int, out_planes: int, nb_layers: int,
                    stride: int, dropRate: float) -> nn.Sequential:
        return nn.Sequential(*[
            block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropRate)
            for i in range(nb_layers)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k on 32x32 inputs (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016)."""

    def __init__(self, depth: int, num_classes: int, widen_factor: int = 1, dropRate: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        nChannels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, nChannels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, nChannels[0], nChannels[1], BasicBlock, 1, dropRate)
        self.block2 = NetworkBlock(n, nChannels[1], nChannels[2], BasicBlock, 2, dropRate)
        self.block3 = NetworkBlock(n, nChannels[2], nChannels[3], BasicBlock, 2, dropRate)
        self.bn1 = nn.BatchNorm2d(nChannels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(nChannels[3], num_classes)
        self.nChannels = nChannels[3]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.block1, self.block2, self.block3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False
                ) -> Tensor | tuple[list[Tensor], Tensor]:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        out = self.relu(self.bn1(f3))
        f4 = F.avg_pool2d(out, 8).view(-1, self.nChannels)
        logits = self.fc(f4)
        if not is_feat:
            return logits
        if preact:
            # Calls these BNs a second time, as the original does: in train mode their running
            # statistics are updated twice per forward, which AB-trained checkpoints reflect.
            f1, f2, f3 = [bn(f) for bn, f in zip(self.get_bn_before_relu(), (f1, f2, f3))]
        return [f0, f1, f2, f3, f4], logits


@register_model("wrn_16_1")
def wrn_16_1(**kwargs: Any) -> WideResNet:
    return WideResNet(depth=16, widen_factor=1, **kwargs)


@register_model("wrn_16_2")
def wrn_16_2(**kwargs: Any) -> WideResNet:
    return WideResNet(depth=16, widen_factor=2, **kwargs)


@register_model("wrn_40_1")
def wrn_40_1(**kwargs: Any) -> WideResNet:
    return WideResNet(depth=40, widen_factor=1, **kwargs)


@register_model("wrn_40_2")
def wrn_40_2(**kwargs: Any) -> WideResNet:
    return WideResNet(depth=40, widen_factor=2, **kwargs)
