"""The one checkpoint reader/writer: atomic writes, ``weights_only`` reads, clear errors."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit its architecture (message says why)."""


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash (or a full disk) at any moment leaves either the old file or the new one, never a
    truncated mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict safely (``weights_only=True``: no code runs) onto ``map_location``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises pickle/zip/runtime errors of many types
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"{path} holds Python objects that need code execution to load; checkpoints are "
                f"loaded with torch.load(weights_only=True) for safety, so it is refused. Re-save "
                f"it with plain tensors/dicts (e.g. torch.save({{'model': state_dict}}, path))."
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {text.splitlines()[0] if text else ''}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, expected a checkpoint dict")
    return ckpt


def state_dict_mismatch(model: nn.Module, state: dict[str, torch.Tensor], limit: int = 3) -> str | None:
    """Describe the first differences between ``model``'s state_dict and ``state``, or None."""
    own = model.state_dict()
    problems = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing:
        problems.append("missing keys " + ", ".join(missing[:limit]) + (" ..." if len(missing) > limit else ""))
    if unexpected:
        problems.append("unexpected keys " + ", ".join(unexpected[:limit])
                        + (" ..." if len(unexpected) > limit else ""))
    for k in shapes[:limit]:
        problems.append(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
    return "; ".join(problems) or None


def load_model_weights(model: nn.Module, path: str | os.PathLike, arch: str,
                       map_location: str | torch.device = "cpu",
                       hint: str = "Is it a checkpoint of another model? (use --model_t to name it)") -> dict:
    """Load ``ckpt['model']`` from ``path`` into ``model`` with ``strict=True``; return the checkpoint."""
    ckpt = load_checkpoint(path, map_location)
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no 'model' state_dict (keys: {sorted(ckpt)[:5]})")
    problem = state_dict_mismatch(model, state)
    if problem:
        raise CheckpointError(f"{path} does not fit architecture {arch}: {problem}. {hint}".rstrip())
    model.load_state_dict(state, strict=True)
    return ckpt


def write_json_atomic(data: dict, path: str | os.PathLike) -> None:
    """Write JSON through a temporary file + rename, so readers never see half a file."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
