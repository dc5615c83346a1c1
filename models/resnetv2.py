"""ImageNet-style ResNets with a CIFAR stem (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016): four stages, 3x3 stem conv, no max-pool.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import register_model
from .resnet import BlockOutput, finish_block

Tensor = torch.Tensor


class GlobalAvgPool2d(nn.Module):
    """(B, C, H, W) -> (B, C, 1, 1), the value of nn.AdaptiveAvgPool2d((1, 1)) spelled as a mean: torch routes
    a (1, 1) adaptive pooling to mean today, and this keeps the backward a mean's without relying on that
    (adaptive pooling's own CUDA backward is refused under --deterministic)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3), keepdim=True)


def shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (an empty Sequential, no keys) or a strided 1x1 projection with BN."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (He et al., 2016)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, is_last: bool = False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x: Tensor) -> BlockOutput:
        out = torch.relu_(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return finish_block(out, self.is_last)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a shortcut (He et al., 2016)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, is_last: bool = False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x: Tensor) -> BlockOutput:
        out = torch.relu_(self.bn1(self.conv1(x)))
        out = torch.relu_(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)
        return finish_block(out, self.is_last)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """Four-stage ResNet on 32x32 inputs (He et al., "Deep Residual Learning", CVPR 2016)."""

    def __init__(self, block: Block, num_blocks: list[int], num_classes: int = 10,
                 zero_init_residual: bool = False):
        super().__init__()
        if any(n < 1 for n in num_blocks):
            raise ValueError(f"every stage needs at least one block, got {num_blocks}")
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = GlobalAvgPool2d()
        self.linear = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            # Each residual branch starts at zero, so every block starts as the identity.
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block: Block, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for i, block_stride in enumerate(strides):
            layers.append(block(self.in_planes, planes, block_stride, is_last=(i == num_blocks - 1)))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        last_blocks = [self.layer1[-1], self.layer2[-1], self.layer3[-1], self.layer4[-1]]
        if isinstance(last_blocks[0], Bottleneck):
            return [b.bn3 for b in last_blocks]
        if isinstance(last_blocks[0], BasicBlock):
            return [b.bn2 for b in last_blocks]
        raise NotImplementedError("ResNet unknown block error !!!")

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False
                ) -> Tensor | tuple[list[Tensor], Tensor]:
        f0 = torch.relu_(self.bn1(self.conv1(x)))
        f1, f1_pre = self.layer1(f0)
        f2, f2_pre = self.layer2(f1)
        f3, f3_pre = self.layer3(f2)
        f4, f4_pre = self.layer4(f3)
        f5 = self.avgpool(f4).flatten(1)
        logits = self.linear(f5)
        if not is_feat:
            return logits
        if preact:
            return [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5], logits
        return [f0, f1, f2, f3, f4, f5], logits


def ResNet18(**kwargs: Any) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def ResNet34(**kwargs: Any) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


@register_model("ResNet50")
def ResNet50(**kwargs: Any) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def ResNet101(**kwargs: Any) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


def ResNet152(**kwargs: Any) -> ResNet:
    return ResNet(Bottleneck, [3, 8, 36, 3], **kwargs)
