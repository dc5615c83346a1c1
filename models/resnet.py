"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

Depth 6n+2 with three stages of n BasicBlocks; the ``x4`` variants are four times wider.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import register_model

Tensor = torch.Tensor
BlockOutput = Tensor | tuple[Tensor, Tensor]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def finish_block(out: Tensor, is_last: bool) -> BlockOutput:
    """Final ReLU of a residual block; the last block of a stage also returns the pre-ReLU sum."""
    activated = torch.relu(out)  # out of place: ``out`` is the pre-activation feature
    return (activated, out) if is_last else activated


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or projection shortcut (He et al., 2016)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, is_last: bool = False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> BlockOutput:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += residual
        return finish_block(out, self.is_last)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a shortcut (He et al., 2016)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, is_last: bool = False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> BlockOutput:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += residual
        return finish_block(out, self.is_last)


BLOCKS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], int]] = {
    "basicblock": (BasicBlock, 6),  # (block, layers per block); depth = 3 * n * layers + 2
    "bottleneck": (Bottleneck, 9),
}


class ResNet(nn.Module):
    """CIFAR ResNet with three stages (He et al., "Deep Residual Learning", CVPR 2016)."""

    def __init__(self, depth: int, num_filters: list[int], block_name: str = "BasicBlock",
                 num_classes: int = 10):
        super().__init__()
        if block_name.lower() not in BLOCKS:
            raise ValueError(f"block_name must be 'BasicBlock' or 'Bottleneck', got {block_name!r}")
        block, layers_per_block = BLOCKS[block_name.lower()]
        if depth < layers_per_block + 2 or (depth - 2) % layers_per_block != 0:
            raise ValueError(f"with {block.__name__}, depth must be {layers_per_block}n+2 "
                             f"with n >= 1, got {depth}")
        n = (depth - 2) // layers_per_block

        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, num_filters[1], n)
        self.layer2 = self._make_layer(block, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            # Built before the first block: the original's RNG order.
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        layers = [block(self.inplanes, planes, stride, downsample, is_last=(blocks == 1))]
        self.inplanes = out_planes
        for i in range(1, blocks):
            layers.append(block(self.inplanes, planes, is_last=(i == blocks - 1)))
        return nn.Sequential(*layers)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        last_blocks = [self.layer1[-1], self.layer2[-1], self.layer3[-1]]
        if isinstance(last_blocks[0], Bottleneck):
            return [b.bn3 for b in last_blocks]
        if isinstance(last_blocks[0], BasicBlock):
            return [b.bn2 for b in last_blocks]
        raise NotImplementedError("ResNet unknown block error !!!")

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False
                ) -> Tensor | tuple[list[Tensor], Tensor]:
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0)
        f2, f2_pre = self.layer2(f1)
        f3, f3_pre = self.layer3(f2)
        f4 = self.avgpool(f3).flatten(1)
        logits = self.fc(f4)
        if not is_feat:
            return logits
        if preact:
            return [f0, f1_pre, f2_pre, f3_pre, f4], logits
        return [f0, f1, f2, f3, f4], logits


SMALL = [16, 16, 32, 64]
WIDE = [32, 64, 128, 256]


@register_model("resnet8")
def resnet8(**kwargs: Any) -> ResNet:
    return ResNet(8, SMALL, "basicblock", **kwargs)


@register_model("resnet14")
def resnet14(**kwargs: Any) -> ResNet:
    return ResNet(14, SMALL, "basicblock", **kwargs)


@register_model("resnet20")
def resnet20(**kwargs: Any) -> ResNet:
    return ResNet(20, SMALL, "basicblock", **kwargs)


@register_model("resnet32")
def resnet32(**kwargs: Any) -> ResNet:
    return ResNet(32, SMALL, "basicblock", **kwargs)


@register_model("resnet44")
def resnet44(**kwargs: Any) -> ResNet:
    return ResNet(44, SMALL, "basicblock", **kwargs)


@register_model("resnet56")
def resnet56(**kwargs: Any) -> ResNet:
    return ResNet(56, SMALL, "basicblock", **kwargs)


@register_model("resnet110")
def resnet110(**kwargs: Any) -> ResNet:
    return ResNet(110, SMALL, "basicblock", **kwargs)


@register_model("resnet8x4")
def resnet8x4(**kwargs: Any) -> ResNet:
    return ResNet(8, WIDE, "basicblock", **kwargs)


@register_model("resnet32x4")
def resnet32x4(**kwargs: Any) -> ResNet:
    return ResNet(32, WIDE, "basicblock", **kwargs)
