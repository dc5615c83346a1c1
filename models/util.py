"""Helper modules the distillation methods attach to the student: regressors, embeddings, connectors."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Shape = Sequence[int]  # (N, C, H, W) of a feature map, e.g. a torch.Size


class ConvReg(nn.Module):
    """FitNets (Romero et al., ICLR 2015) regressor: maps a student feature map onto the teacher's shape."""

    def __init__(self, s_shape: Shape, t_shape: Shape, use_relu: bool = True):
        super().__init__()
        self.use_relu = use_relu
        _, s_C, s_H, s_W = s_shape
        _, t_C, t_H, t_W = t_shape
        if s_H == 2 * t_H:
            self.conv = nn.Conv2d(s_C, t_C, kernel_size=3, stride=2, padding=1)
        elif s_H * 2 == t_H:
            self.conv = nn.ConvTranspose2d(s_C, t_C, kernel_size=4, stride=2, padding=1)
        elif s_H >= t_H:
            self.conv = nn.Conv2d(s_C, t_C, kernel_size=(1 + s_H - t_H, 1 + s_W - t_W))
        else:
            raise NotImplementedError(
                f"ConvReg cannot map a student feature of shape {tuple(s_shape)} onto a teacher feature of "
                f"shape {tuple(t_shape)}: the student map must be twice, half, or at least as large as the "
                f"teacher's")
        self.bn = nn.BatchNorm2d(t_C)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x


class Normalize(nn.Module):
    """L-p normalisation of each row (no eps, as in the CRD code)."""

    def __init__(self, power: int = 2):
        super().__init__()
        self.power = power

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(self.power).sum(1, keepdim=True).pow(1.0 / self.power)
        return x.div(norm)


class Flatten(nn.Module):
    """(B, ...) -> (B, -1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


class Regress(nn.Module):
    """Linear regressor with ReLU (unused by the shipped methods)."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 1024):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.linear(x.view(x.shape[0], -1)))


class Embed(nn.Module):
    """CRD (Tian et al., ICLR 2020) embedding head: linear projection onto the unit sphere."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.l2norm = Normalize(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2norm(self.linear(x.view(x.shape[0], -1)))


class LinearEmbed(nn.Module):
    """Linear embedding used by Correlation Congruence (Peng et al., ICCV 2019)."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.view(x.shape[0], -1))


class MLPEmbed(nn.Module):
    """Two-layer normalised embedding (unused by the shipped methods)."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128):
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)
        self.l2norm = Normalize(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.linear1(x.view(x.shape[0], -1)))
        return self.l2norm(self.linear2(x))


# layer -> (pooled spatial size, channels) of the CIFAR ResNets' features (PoolEmbed only).
_POOL_EMBED_LAYERS = {0: (8, 16), 1: (8, 16), 2: (6, 32), 3: (4, 64), 4: (1, 64)}


class PoolEmbed(nn.Module):
    """Pool, flatten, project and normalise one feature layer (unused by the shipped methods)."""

    def __init__(self, layer: int = 0, dim_out: int = 128, pool_type: str = "avg"):
        super().__init__()
        if layer not in _POOL_EMBED_LAYERS:
            raise NotImplementedError(f"PoolEmbed: layer {layer} not supported (0-4)")
        pool_size, channels = _POOL_EMBED_LAYERS[layer]
        self.embed = nn.Sequential()
        if layer <= 3:
            if pool_type == "max":
                self.embed.add_module("MaxPool", nn.AdaptiveMaxPool2d((pool_size, pool_size)))
            elif pool_type == "avg":
                self.embed.add_module("AvgPool", nn.AdaptiveAvgPool2d((pool_size, pool_size)))
        self.embed.add_module("Flatten", Flatten())
        self.embed.add_module("Linear", nn.Linear(channels * pool_size * pool_size, dim_out))
        self.embed.add_module("Normalize", Normalize(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


class Connector(nn.Module):
    """Activation Boundaries (Heo et al., AAAI 2019) connector: one ConvReg (no ReLU) per mismatched layer."""

    def __init__(self, s_shapes: Sequence[Shape], t_shapes: Sequence[Shape]):
        super().__init__()
        self.s_shapes = s_shapes
        self.t_shapes = t_shapes
        self.connectors = nn.ModuleList(
            nn.Sequential() if s[1] == t[1] and s[2] == t[2] else ConvReg(s, t, use_relu=False)
            for s, t in zip(s_shapes, t_shapes))

    def forward(self, g_s: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [connector(f) for connector, f in zip(self.connectors, g_s)]


class ConnectorV2(nn.Module):
    """1x1-conv + BN connector of the Overhaul paper's style (unused by the shipped methods)."""

    def __init__(self, s_shapes: Sequence[Shape], t_shapes: Sequence[Shape]):
        super().__init__()
        self.s_shapes = s_shapes
        self.t_shapes = t_shapes
        self.connectors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(s[1], t[1], kernel_size=1, bias=False), nn.BatchNorm2d(t[1]))
            for s, t in zip(s_shapes, t_shapes))
        # Re-initialised after all layers exist (the original's RNG order).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, (2.0 / m.out_channels) ** 0.5)  # He fan-out, 1x1 kernel
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, g_s: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [connector(f) for connector, f in zip(self.connectors, g_s)]


def _conv_stack(conv: type[nn.Module], channels: Sequence[int], use_bn: bool) -> nn.Sequential:
    """(conv3x3 -> BN or identity -> LeakyReLU(0.1)) for each consecutive channel pair."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [conv(c_in, c_out, 3, 1, 1),
                   nn.BatchNorm2d(c_out) if use_bn else nn.Sequential(),
                   nn.LeakyReLU(0.1, inplace=True)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Factor Transfer (Kim et al., NeurIPS 2018) paraphraser: an auto-encoder of the teacher feature."""

    def __init__(self, t_shape: Shape, k: float = 0.5, use_bn: bool = False):
        super().__init__()
        in_channel = t_shape[1]
        out_channel = int(t_shape[1] * k)
        self.encoder = _conv_stack(nn.Conv2d, [in_channel, in_channel, out_channel, out_channel], use_bn)
        self.decoder = _conv_stack(nn.ConvTranspose2d, [out_channel, out_channel, in_channel, in_channel],
                                   use_bn)

    def forward(self, f_s: torch.Tensor, is_factor: bool = False):
        factor = self.encoder(f_s)
        if is_factor:
            return factor
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Factor Transfer (Kim et al., NeurIPS 2018) translator: encodes the student feature into a factor."""

    def __init__(self, s_shape: Shape, t_shape: Shape, k: float = 0.5, use_bn: bool = True):
        super().__init__()
        in_channel = s_shape[1]
        out_channel = int(t_shape[1] * k)
        self.encoder = _conv_stack(nn.Conv2d, [in_channel, in_channel, out_channel, out_channel], use_bn)

    def forward(self, f_s: torch.Tensor) -> torch.Tensor:
        return self.encoder(f_s)
