"""MobileNetV2 for CIFAR (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018), with plain ReLU activations as in RepDistiller.
"""
from __future__ import annotations


import torch
from torch import nn

from .registry import normal_init_, register_model

Tensor = torch.Tensor


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    """3x3 conv + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


def conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    """1x1 conv + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3, linear 1x1 projection (Sandler et al., CVPR 2018)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        self.blockname = None
        self.stride = stride
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and inp == oup
        hidden = inp * expand_ratio
        self.conv = nn.Sequential(
            # The expansion conv is kept even when expand_ratio == 1 (checkpoint layout).
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )
        self.names = ["0", "1", "2", "3", "4", "5", "6", "7"]

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 on 32x32 inputs (Sandler et al., CVPR 2018)."""

    def __init__(self, T: int, feature_dim: int, input_size: int = 32, width_mult: float = 1.0,
                 remove_avg: bool = False):
        super().__init__()
        if input_size % 32 != 0:
            raise ValueError(f"MobileNetV2 input_size must be a multiple of 32, got {input_size}")
        self.remove_avg = remove_avg
        # (expansion t, channels c, blocks n, first stride s) per stage
        self.interverted_residual_setting = [
            [1, 16, 1, 1],
            [T, 24, 2, 1],
            [T, 32, 3, 2],
            [T, 64, 4, 2],
            [T, 96, 3, 1],
            [T, 160, 3, 2],
            [T, 320, 1, 1],
        ]

        input_channel = int(32 * width_mult)
        self.conv1 = conv_bn(3, input_channel, 2)
        blocks = []
        for t, c, n, s in self.interverted_residual_setting:
            output_channel = int(c * width_mult)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.ModuleList(blocks)

        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_1x1_bn(input_channel, self.last_channel)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, feature_dim))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        normal_init_(self)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.blocks[i][-1].conv[-1] for i in (1, 2, 4, 6)]

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.blocks])

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False
                ) -> Tensor | tuple[list[Tensor], Tensor]:
        # No ReLU follows the linear bottlenecks, so preact features equal plain ones.
        f0 = self.conv1(x)
        f1 = self.blocks[1](self.blocks[0](f0))
        f2 = self.blocks[2](f1)
        f3 = self.blocks[4](self.blocks[3](f2))
        f4 = self.blocks[6](self.blocks[5](f3))
        out = self.conv2(f4)
        if not self.remove_avg:
            out = self.avgpool(out)
        f5 = out.flatten(1)
        logits = self.classifier(f5)
        if not is_feat:
            return logits
        return [f0, f1, f2, f3, f4, f5], logits


def mobilenetv2_T_w(T: int, W: float, feature_dim: int = 100) -> MobileNetV2:
    """MobileNetV2 with expansion ratio ``T`` and width multiplier ``W``."""
    return MobileNetV2(T=T, feature_dim=feature_dim, width_mult=W)


@register_model("MobileNetV2")
def mobile_half(num_classes: int) -> MobileNetV2:
    return mobilenetv2_T_w(6, 0.5, num_classes)
