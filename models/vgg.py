"""VGG for CIFAR (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015), five groups of 3x3 convolutions, optionally with BatchNorm.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .registry import normal_init_, register_model
from .resnetv2 import GlobalAvgPool2d

Tensor = torch.Tensor

# Conv widths of the five groups.
cfg: dict[str, list[list[int]]] = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
    "S": [[64], [128], [256], [512], [512]],
}


class VGG(nn.Module):
    """VGG with a global-pool + linear head (Simonyan & Zisserman, ICLR 2015)."""

    def __init__(self, cfg: list[list[int]], batch_norm: bool = False, num_classes: int = 1000):
        super().__init__()
        if len(cfg) != 5:
            raise ValueError(f"VGG cfg needs 5 groups, got {len(cfg)}")
        self.block0 = self._make_layers(cfg[0], batch_norm, 3)
        self.block1 = self._make_layers(cfg[1], batch_norm, cfg[0][-1])
        self.block2 = self._make_layers(cfg[2], batch_norm, cfg[1][-1])
        self.block3 = self._make_layers(cfg[3], batch_norm, cfg[2][-1])
        self.block4 = self._make_layers(cfg[4], batch_norm, cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = GlobalAvgPool2d()
        self.classifier = nn.Linear(512, num_classes)
        self._initialize_weights()

    @staticmethod
    def _make_layers(widths: list[int], batch_norm: bool, in_channels: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for v in widths:
            layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            in_channels = v
        # The group's last ReLU is applied in forward, so the pre-ReLU output is available.
        return nn.Sequential(*layers[:-1])

    def _initialize_weights(self) -> None:
        normal_init_(self)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([
            self.block0, self.pool0, self.block1, self.pool1, self.block2, self.pool2,
            self.block3, self.pool3, self.block4, self.pool4,
        ])

    def get_bn_before_relu(self) -> list[nn.Module]:
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False
                ) -> Tensor | tuple[list[Tensor], Tensor]:
        h = x.shape[2]
        f0 = F.relu(self.block0(x))
        f1_pre = self.block1(self.pool0(f0))
        f1 = F.relu(f1_pre)
        f2_pre = self.block2(self.pool1(f1))
        f2 = F.relu(f2_pre)
        f3_pre = self.block3(self.pool2(f2))
        f3 = F.relu(f3_pre)
        x = self.pool3(f3) if h == 64 else f3
        f4_pre = self.block4(x)
        f4 = F.relu(f4_pre)
        f5 = self.pool4(f4).flatten(1)
        logits = self.classifier(f5)
        if not is_feat:
            return logits
        if preact:
            return [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5], logits
        return [f0, f1, f2, f3, f4, f5], logits


def vgg8(**kwargs: Any) -> VGG:
    return VGG(cfg["S"], **kwargs)


@register_model("vgg8")
def vgg8_bn(**kwargs: Any) -> VGG:
    return VGG(cfg["S"], batch_norm=True, **kwargs)


def vgg11(**kwargs: Any) -> VGG:
    return VGG(cfg["A"], **kwargs)


@register_model("vgg11")
def vgg11_bn(**kwargs: Any) -> VGG:
    return VGG(cfg["A"], batch_norm=True, **kwargs)


def vgg13(**kwargs: Any) -> VGG:
    return VGG(cfg["B"], **kwargs)


@register_model("vgg13")
def vgg13_bn(**kwargs: Any) -> VGG:
    return VGG(cfg["B"], batch_norm=True, **kwargs)


def vgg16(**kwargs: Any) -> VGG:
    return VGG(cfg["D"], **kwargs)


@register_model("vgg16")
def vgg16_bn(**kwargs: Any) -> VGG:
    return VGG(cfg["D"], batch_norm=True, **kwargs)


def vgg19(**kwargs: Any) -> VGG:
    return VGG(cfg["E"], **kwargs)


@register_model("vgg19")
def vgg19_bn(**kwargs: Any) -> VGG:
    return VGG(cfg["E"], batch_norm=True, **kwargs)
