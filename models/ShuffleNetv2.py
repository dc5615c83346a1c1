"""ShuffleNetV2 for CIFAR (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .ShuffleNetv1 import ShuffleBlock
from .registry import register_model

Tensor = torch.Tensor


class SplitBlock(nn.Module):
    """Channel split: the first ``int(C * ratio)`` channels and the rest."""

    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c = int(x.size(1) * self.ratio)
        return x[:, :c, :, :], x[:, c:, :, :]


class BasicBlock(nn.Module):
    """Split, transform one half (1x1, depthwise 3x3, 1x1), concat, shuffle (Ma et al., 2018)."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5, is_last: bool = False):
        super().__init__()
        self.is_last = is_last
        self.split = SplitBlock(split_ratio)
        in_channels = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1,
                               groups=in_channels, bias=False)
        self.bn2 = nn.BatchNorm2d(in_channels)
        self.conv3 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(in_channels)
        self.shuffle = ShuffleBlock(groups=2)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x1, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)), inplace=True)
        out = self.bn2(self.conv2(out))
        preact = self.bn3(self.conv3(out))
        out = self.shuffle(torch.cat([x1, F.relu(preact)], 1))
        if not self.is_last:
            return out
        # The original returns the pre-activation without the channel shuffle.
        return out, torch.cat([x1, preact], 1)


class DownBlock(nn.Module):
    """Stride-2 unit: both halves are transformed and concatenated, doubling width (Ma et al., 2018)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid_channels = out_channels // 2
        # left
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        # right
        self.conv3 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.conv4 = nn.Conv2d(mid_channels, mid_channels, kernel_size=3, stride=2, padding=1,
                               groups=mid_channels, bias=False)
        self.bn4 = nn.BatchNorm2d(mid_channels)
        self.conv5 = nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid_channels)
        self.shuffle = ShuffleBlock(groups=2)

    def forward(self, x: Tensor) -> Tensor:
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)), inplace=True)
        right = F.relu(self.bn3(self.conv3(x)), inplace=True)
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)), inplace=True)
        return self.shuffle(torch.cat([left, right], 1))


# net_size -> stage widths (three stages + final 1x1 conv) and blocks per stage
configs: dict[float, dict[str, tuple[int, ...]]] = {
    0.2: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 3, 3)},
    0.3: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 7, 3)},
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 on 32x32 inputs (Ma et al., ECCV 2018)."""

    def __init__(self, net_size: float, num_classes: int = 10):
        super().__init__()
        if net_size not in configs:
            raise ValueError(f"ShuffleNetV2 net_size must be one of {sorted(configs)}, got {net_size}")
        out_channels = configs[net_size]["out_channels"]
        num_blocks = configs[net_size]["num_blocks"]

        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [DownBlock(self.in_channels, out_channels)]
        for i in range(num_blocks):
            layers.append(BasicBlock(out_channels, is_last=(i == num_blocks - 1)))
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def get_feat_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        raise NotImplementedError('ShuffleNetV2 currently is not supported for "Overhaul" teacher')

    def forward(self, x: Tensor, is_feat: bool = False, preact: bool = False
                ) -> Tensor | tuple[list[Tensor], Tensor]:
        f0 = F.relu(self.bn1(self.conv1(x)), inplace=True)
        f1, f1_pre = self.layer1(f0)
        f2, f2_pre = self.layer2(f1)
        f3, f3_pre = self.layer3(f2)
        out = F.relu(self.bn2(self.conv2(f3)), inplace=True)
        f4 = F.avg_pool2d(out, 4).flatten(1)
        logits = self.linear(f4)
        if not is_feat:
            return logits
        if preact:
            return [f0, f1_pre, f2_pre, f3_pre, f4], logits
        return [f0, f1, f2, f3, f4], logits


@register_model("ShuffleV2")
def ShuffleV2(**kwargs: Any) -> ShuffleNetV2:
    return ShuffleNetV2(net_size=1, **kwargs)
