"""Name -> factory registry behind the ``--model`` / ``--model_s`` / ``--path_t`` choices, and shared init."""
from __future__ import annotations

import math
from typing import Callable, TypeVar

from torch import nn

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

model_dict: dict[str, Callable[..., nn.Module]] = {}  # the CIFAR zoo (the original's)
imagenet_model_dict: dict[str, Callable[..., nn.Module]] = {}  # 224x224 networks (models/imagenet.py)


def register_model(name: str, zoo: dict[str, Callable[..., nn.Module]] | None = None
                   ) -> Callable[[Factory], Factory]:
    """Function decorator: make a factory available as ``zoo[name]`` (default: the CIFAR ``model_dict``)."""
    zoo = model_dict if zoo is None else zoo

    def add(factory: Factory) -> Factory:
        if name in zoo:
            raise ValueError(f"model {name!r} registered twice")
        zoo[name] = factory
        return factory

    return add


def normal_init_(model: nn.Module) -> None:
    """The VGG/MobileNetV2 re-initialisation: conv N(0, sqrt(2/n)) with n = kh*kw*out, BN 1/0, linear N(0, 0.01)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 0.01)
            m.bias.data.zero_()
