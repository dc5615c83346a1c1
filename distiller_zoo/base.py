"""The contract every ``--distill`` method implements, and the registry that maps names to methods.

A method owns its extra modules (as sub-modules, so ``state_dict`` saves them), says which of them
train with the student and which stay frozen, computes its loss term, and may define an init stage.
The training loop knows nothing else about methods.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import nn

DISTILLERS: dict[str, type["Distiller"]] = {}


def register_distiller(name: str) -> Callable[[type["Distiller"]], type["Distiller"]]:
    """Class decorator: make a method available as ``--distill name``."""

    def add(cls: type["Distiller"]) -> type["Distiller"]:
        if name in DISTILLERS:
            raise ValueError(f"distillation method {name!r} registered twice")
        cls.name = name
        DISTILLERS[name] = cls
        return cls

    return add


class Distiller(nn.Module):
    """Base class: the method term of ``loss = gamma*CE + alpha*KL + beta*term``.

    ``feat_s``/``feat_t`` given to ``__init__`` are the feature lists of a dummy forward of a
    (2, 3, 32, 32) batch (as the original infers shapes); ``opt`` is the parsed options namespace.
    """

    name: ClassVar[str] = ""
    uses_features: ClassVar[bool] = True  # False: the loop skips building feature lists
    preact: ClassVar[bool] = False  # True: forward both nets with preact=True (AB)
    has_init_stage: ClassVar[bool] = False  # AB, FT, FSP

    def __init__(self, opt, feat_s: list[torch.Tensor], feat_t: list[torch.Tensor]):
        super().__init__()

    def trainable_modules(self) -> list[nn.Module]:
        """Extra modules optimised together with the student in the main stage."""
        return []

    def frozen_modules(self) -> list[nn.Module]:
        """Extra modules kept in eval mode (and out of the optimizer) in the main stage."""
        return []

    def forward(self, feat_s: list[torch.Tensor], feat_t: list[torch.Tensor],
                logit_s: torch.Tensor, logit_t: torch.Tensor, batch) -> torch.Tensor:
        """The method's loss term (weighted by ``-b/--beta`` in the loop)."""
        raise NotImplementedError

    # Init stage (only when has_init_stage).
    def init_modules(self, model_s: nn.Module) -> list[nn.Module]:
        """Modules trained (and put in train mode) during the init stage."""
        raise NotImplementedError(f"{self.name} has no init stage")

    def init_learning_rate(self, opt) -> float:
        return opt.learning_rate

    def init_loss(self, feat_s: list[torch.Tensor], feat_t: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no init stage")
