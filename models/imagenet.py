"""ImageNet networks of the CRD paper's and mdistiller's ImageNet pairs (ResNet34 -> ResNet18, ResNet50 ->
MobileNetV1), registered in ``imagenet_model_dict``.

The ResNets are torchvision's (He et al., "Deep Residual Learning", CVPR 2016; v1.5: the stride on the 3x3
of a Bottleneck): the same attribute names and registration order, so their ``state_dict`` is torchvision's
key for key and torchvision's published weights load with ``strict=True``. MobileNetV1 (Howard et al.,
2017) keeps mdistiller's layout (``model.<i>.<j>``, ``fc``). Both give the zoo's features: ``is_feat=True``
returns [stem, stage 1..4, pooled vector], ``preact=True`` the stages' last maps before their final ReLU.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import imagenet_model_dict, register_model
from .resnet import BasicBlock, Bottleneck
from .mobilenetv2 import conv_bn
from .resnetv2 import GlobalAvgPool2d

Tensor = torch.Tensor
Features = tuple[list[Tensor], Tensor]
Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """torchvision's ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages, global pooling, ``fc``."""

    def __init__(self, block: Block, layers: list[int], num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = GlobalAvgPool2d()  # torchvision's AdaptiveAvgPool2d((1, 1)): no keys either way
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:  # torchvision's projection shortcut: downsample.0/.1
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out_planes))
        layers = [block(self.inplanes, planes, stride, downsample, is_last=blocks == 1)]
        self.inplanes = out_planes
        layers += [block(self.inplanes, planes, is_last=i == blocks - 1) for i in range(1, blocks)]
        return nn.Sequential(*layers)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.maxpool,
                              self.layer1, self.layer2, self.layer3, self.layer4])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        last_blocks = [self.layer1[-1], self.layer2[-1], self.layer3[-1], self.layer4[-1]]
        return [b.bn3 if isinstance(b, Bottleneck) else b.bn2 for b in last_blocks]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False) -> Tensor | Features:
        f0 = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        f1, f1_pre = self.layer1(f0)
        f2, f2_pre = self.layer2(f1)
        f3, f3_pre = self.layer3(f2)
        f4, f4_pre = self.layer4(f3)  # (B, 512 * expansion, H/32, W/32)
        f5 = self.avgpool(f4).flatten(1)
        logits = self.fc(f5)
        if not is_feat:
            return logits
        if preact:
            return [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5], logits
        return [f0, f1, f2, f3, f4, f5], logits


@register_model("ResNet18", imagenet_model_dict)
def resnet18(**kwargs: Any) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


@register_model("ResNet34", imagenet_model_dict)
def resnet34(**kwargs: Any) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


@register_model("ResNet50", imagenet_model_dict)
def resnet50(**kwargs: Any) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    """Depthwise-separable block: depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp), nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


# MobileNetV1 blocks (out channels, stride) after the stem conv_bn(3, 32, 2).
MOBILENET_V1 = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]
# model[a:b] of each feature: the stem, then the four resolutions (H/4 .. H/32).
MOBILENET_V1_STAGES = [(0, 2), (2, 4), (4, 6), (6, 12), (12, 14)]


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al., "MobileNets", 2017), width 1.0, as mdistiller's ImageNet student."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        blocks, inp = [conv_bn(3, 32, 2)], 32
        for oup, stride in MOBILENET_V1:
            blocks.append(conv_dw(inp, oup, stride))
            inp = oup
        blocks.append(GlobalAvgPool2d())  # mdistiller's AvgPool2d(7), for any input size
        self.model = nn.Sequential(*blocks)
        self.fc = nn.Linear(1024, num_classes)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.model])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.model[end - 1][4] for _, end in MOBILENET_V1_STAGES[1:]]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False) -> Tensor | Features:
        feats, pre = [], []
        for start, end in MOBILENET_V1_STAGES:
            x = self.model[start:end - 1](x)
            before_relu = self.model[end - 1][:-1](x)  # the stage's last block without its final ReLU
            x = torch.relu(before_relu)  # out of place: before_relu is the preact feature
            feats.append(x)
            pre.append(before_relu)
        pooled = self.model[-1](x).flatten(1)  # (B, 1024)
        logits = self.fc(pooled)
        if not is_feat:
            return logits
        if preact:
            return [feats[0], *pre[1:], pooled], logits
        return [*feats, pooled], logits


@register_model("MobileNetV1", imagenet_model_dict)
def mobilenet_v1(**kwargs: Any) -> MobileNetV1:
    return MobileNetV1(**kwargs)
