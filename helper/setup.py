"""Setup shared by both scripts: device, seeds, data, models, output folders, and clean error exits."""
from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from helper.util import LOG, seed_everything, setup_logging


class SetupError(RuntimeError):
    """A bad input found before training starts (the message says what and what to do)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is the whole story: printed without a traceback."""
    from dataset import DatasetError
    from helper.checkpoint import CheckpointError
    from helper.loops import NonFiniteLossError

    return (SetupError, CheckpointError, DatasetError, NonFiniteLossError, ValueError)


def cli(main: Callable[[list[str] | None], object]) -> Callable[[list[str] | None], int]:
    """Wrap a script's main: a user error prints one line (no traceback) and exits 1."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            main(argv)
        except user_errors() as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0

    return wrapped


def prepare_run(opt) -> torch.device:
    """Logging, seeds and cuDNN settings; make sure the output folders are writable."""
    setup_logging(getattr(opt, "is_main", True))
    device = torch.device(opt.device)
    seed_everything(opt.seed + getattr(opt, "rank", 0), opt.deterministic)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not opt.deterministic
    if getattr(opt, "is_main", True):
        for folder in (opt.save_folder, opt.tb_folder):
            ensure_writable(folder)
    return device


def ensure_writable(folder: str) -> None:
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise SetupError(f"output folder {folder} is not writable ({e.strerror}); choose another "
                         f"--save_root or fix its permissions") from None


def build_model(name: str, num_classes: int, device: torch.device) -> nn.Module:
    from models import model_dict

    if name not in model_dict:
        raise SetupError(f"unknown model {name!r}; choose one of: {', '.join(model_dict)}")
    return model_dict[name](num_classes=num_classes).to(device)


def build_data(opt, device: torch.device, *, instance: bool, crd_k: int | None = None):
    from dataset import build_loaders

    return build_loaders(
        opt.data_folder, opt.data_backend, opt.batch_size, opt.num_workers, device,
        instance=instance, crd_k=crd_k, crd_mode=getattr(opt, "mode", "exact"), seed=opt.seed,
        rank=getattr(opt, "rank", 0), world_size=getattr(opt, "world_size", 1))


def to_channels_last(opt, *models: nn.Module) -> None:
    if opt.channels_last:
        for model in models:
            model.to(memory_format=torch.channels_last)


def maybe_compile(opt, model: nn.Module) -> nn.Module:
    """torch.compile with a warning and the eager model as fallback where it is unavailable."""
    if not opt.compile:
        return model
    try:
        return torch.compile(model)
    except Exception as e:  # compile support varies by platform/version
        LOG.warning(f"--compile: torch.compile failed ({type(e).__name__}: {e}); running eagerly")
        return model


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))
