"""The contract every ``--distill`` method implements, and the registry that maps names to methods.

A method owns its extra modules (as sub-modules, so ``state_dict`` saves them), says which of them
train with the student and which stay frozen, computes its loss term, and may define an init stage.
It also declares its command-line flags, what it needs from the data (CRD: contrast indices) and which
features it reads. The training loop knows nothing else about methods.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from dataset.info import dataset_info
from helper.errors import UserError

DISTILLERS: dict[str, type["Distiller"]] = {}


class MethodError(UserError, ValueError):
    """A method cannot run as asked (a flag out of range, a teacher/student pair it cannot compare)."""


@dataclass(frozen=True)
class DataNeeds:
    """What a method needs in each training batch beyond images, labels and dataset indices."""

    contrast_k: int | None = None  # CRD: this many negatives per sample (Batch.contrast_idx)
    contrast_mode: str = "exact"  # CRD: the positive is the sample itself ('exact') or one of its class

# A model's ``is_feat=True`` list: 4-D maps (B, C, H, W) from the stem on, then the pooled (B, C) vector.
Features = Sequence[torch.Tensor]


def middle(feats: Features) -> list[torch.Tensor]:
    """The block outputs between the stem and the pooled vector (AT, NST, VID, AB, KDSVD)."""
    return list(feats[1:-1])


def spatial(feats: Features) -> list[torch.Tensor]:
    """Every 4-D map, i.e. all but the pooled vector (FSP)."""
    return list(feats[:-1])


def penultimate(feats: Features) -> torch.Tensor:
    """The last 4-D map (SP, FT)."""
    return feats[-2]


def pooled(feats: Features) -> torch.Tensor:
    """The globally pooled (B, C) vector fed to the classifier (CC, CRD, PKT, RKD)."""
    return feats[-1]


def total(losses: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of per-layer losses as a 0-d tensor, added in list order like the original."""
    return sum(losses).reshape(())


def channels(feats: Features) -> list[int]:
    return [f.shape[1] for f in feats]


def pair_name(opt) -> str:
    """'student X, teacher Y' for error messages."""
    return f"student {getattr(opt, 'model_s', '?')}, teacher {getattr(opt, 'model_t', '?')}"


def register_distiller(name: str) -> Callable[[type["Distiller"]], type["Distiller"]]:
    """Class decorator: make a method available as ``--distill name``."""

    def add(cls: type["Distiller"]) -> type["Distiller"]:
        if name in DISTILLERS:
            raise TypeError(f"distillation method {name!r} registered twice")
        cls.name = name
        DISTILLERS[name] = cls
        return cls

    return add


class Distiller(nn.Module):
    """Base class: the method term of ``loss = gamma*CE + alpha*KL + beta*term``.

    ``feat_s``/``feat_t`` given to ``__init__`` are the feature lists of a dummy forward of a batch of two
    images of the dataset's shape (as the original infers shapes); ``opt`` is the parsed options namespace.
    """

    name: ClassVar[str] = ""
    uses_features: ClassVar[bool] = True  # False: the loop skips building feature lists
    student_preact: ClassVar[bool] = False  # True: the student's features are taken before the ReLU (AB)
    teacher_preact: ClassVar[bool] = False  # True: the teacher's features are taken before the ReLU (AB)
    has_init_stage: ClassVar[bool] = False  # AB, FT, FSP
    has_term: ClassVar[bool] = True  # False: no loss term of its own, so -b/--beta is optional (KD)
    paper_weights: ClassVar[str] = ""  # its paper and published CIFAR-100 weights, listed under --distill in --help

    def __init__(self, opt, feat_s: list[torch.Tensor], feat_t: list[torch.Tensor]):
        super().__init__()
        self.epoch = 1  # the current training epoch, 1-based (set_epoch)

    # Declarations read before the method is built.
    @classmethod
    def add_arguments(cls, group: "FlagGroup") -> None:
        """Add the method's command-line flags (listed under its name in ``train_student.py --help``)."""

    @classmethod
    def check_options(cls, opt) -> None:
        """Refuse impossible flag values with a MethodError naming the flag."""

    @classmethod
    def data_needs(cls, opt) -> DataNeeds:
        return DataNeeds()

    def set_epoch(self, epoch: int) -> None:
        """Called by the loop before every epoch of the main stage (1-based), for warm-ups."""
        self.epoch = epoch

    def snapshot(self, batch) -> Callable[[], None]:
        """Save what a forward on ``batch`` may change outside autograd (buffers); the returned function puts
        it back (--skip_nonfinite undoes a bad batch). Methods with large buffers save only what ``batch``
        touches."""
        return snapshot_buffers(self)

    def trainable_modules(self) -> list[nn.Module]:
        """Extra modules optimised together with the student in the main stage."""
        return []

    def frozen_modules(self) -> list[nn.Module]:
        """Extra modules kept in eval mode (and out of the optimizer) in the main stage."""
        return []

    def train(self, mode: bool = True) -> "Distiller":
        """Like ``nn.Module.train``, but frozen modules always stay in eval mode."""
        super().train(mode)
        for module in self.frozen_modules():
            module.train(False)
        return self

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

    # Construction-time checks shared by the layer-wise methods.
    def require_same_depth(self, opt, feat_s: Features, feat_t: Features) -> None:
        """Layer-wise methods pair the i-th student feature with the i-th teacher feature."""
        if len(feat_s) != len(feat_t):
            raise MethodError(
                f"--distill {self.name} compares features layer by layer, but {pair_name(opt)} return "
                f"{len(feat_s)} and {len(feat_t)} features; use models with the same number of stages, "
                f"or a method on the final features (e.g. kd, crd, pkt, rkd, similarity, correlation)")

    def require_same_channels(self, opt, feat_s: Features, feat_t: Features, why: str) -> None:
        if channels(feat_s) != channels(feat_t):
            raise MethodError(
                f"--distill {self.name} needs equal channel counts at every compared layer ({why}), but "
                f"{pair_name(opt)} have {channels(feat_s)} and {channels(feat_t)}; choose a pair of the "
                f"same width (e.g. resnet32x4 -> resnet8x4) or another --distill method")


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def _restore_modes(model: nn.Module, modes: list[bool]) -> None:
    for m, training in zip(model.modules(), modes):
        m.training = training


def build_distiller(opt, model_s: nn.Module, model_t: nn.Module) -> Distiller:
    """Instantiate ``DISTILLERS[opt.distill]`` from the feature shapes of a dummy batch of two images of
    ``opt.dataset``'s shape."""
    if opt.distill not in DISTILLERS:
        raise MethodError(f"unknown --distill {opt.distill!r}; valid names: {', '.join(sorted(DISTILLERS))}")
    device = next(model_s.parameters()).device
    # Drawn from the global CPU generator like the original, so later RNG consumers see the same state.
    data = torch.randn(2, *dataset_info(opt).image_shape).to(device)
    modes_s, modes_t = _modes(model_s), _modes(model_t)
    model_t.eval()
    model_s.eval()
    try:
        with torch.no_grad():
            feat_t, _ = model_t(data, is_feat=True)
            feat_s, _ = model_s(data, is_feat=True)
    finally:
        _restore_modes(model_s, modes_s)
        _restore_modes(model_t, modes_t)
    return DISTILLERS[opt.distill](opt, feat_s, feat_t).to(device)


def snapshot_buffers(*modules: nn.Module) -> Callable[[], None]:
    """Copies of every buffer of ``modules`` (BatchNorm statistics and counters); calling the result puts
    them back in place."""
    buffers = {id(b): b for module in modules for b in module.buffers()}  # a module may hold another's
    saved = [(buffer, buffer.clone()) for buffer in buffers.values()]

    def restore() -> None:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)

    return restore


class FlagGroup:
    """A method's argument group. Methods may share a flag (CC and CRD both use --feat_dim): the second
    declaration of a flag is accepted when it has the same default, and listed under the first method."""

    def __init__(self, parser: argparse.ArgumentParser, title: str):
        self.parser = parser
        self.group = parser.add_argument_group(title)  # listed in --help only when it holds a flag

    def add_argument(self, *names: str, **kwargs) -> None:
        existing = [self.parser._option_string_actions[n] for n in names if n in self.parser._option_string_actions]
        if existing:
            if existing[0].default != kwargs.get("default"):
                raise TypeError(f"method flag {names[0]} declared twice with different defaults")
            return
        self.group.add_argument(*names, **kwargs)


def methods_help() -> str:
    """One line per method for --distill's help: its name and the weights of its published runs."""
    width = max(map(len, DISTILLERS))
    return "\n".join(f"  {name.ljust(width)}  {cls.paper_weights or '-'}"
                     for name, cls in sorted(DISTILLERS.items()))


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """Every registered method's flags, one group per method."""
    for name, cls in DISTILLERS.items():
        cls.add_arguments(FlagGroup(parser, f"--distill {name}"))
