"""Name -> factory registry behind the ``--model`` / ``--model_s`` / ``--path_t`` choices."""
from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

model_dict: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Function decorator: make a factory available as ``model_dict[name]``."""

    def add(factory: Factory) -> Factory:
        if name in model_dict:
            raise ValueError(f"model {name!r} registered twice")
        model_dict[name] = factory
        return factory

    return add
