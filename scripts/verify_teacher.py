"""Check that a teacher checkpoint loads into its CIFAR-100 architecture with ``strict=True``.

    python scripts/verify_teacher.py save/models/resnet56_vanilla/ckpt_epoch_240.pth resnet56

Prints one line and exits 0 when it fits; otherwise prints one line saying why (no traceback) on
stderr and exits 1. Used by scripts/fetch_pretrained_teachers.sh before a download is kept.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

# Run as a script, so the repository root is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NUM_CLASSES = 100


class VerifyError(Exception):
    """A checkpoint that is not a usable teacher (message says why)."""


def verify_teacher(path: str, arch: str) -> str:
    """Load ``path`` into ``model_dict[arch]`` on the CPU; return a one-line summary or raise VerifyError."""
    try:
        from helper.checkpoint import CheckpointError, load_model_weights
        from models import model_dict
    except Exception as e:  # a broken install must still give one line, not a traceback
        raise VerifyError(f"cannot import the project's models ({type(e).__name__}: {e})") from None
    if arch not in model_dict:
        raise VerifyError(f"unknown architecture {arch!r} (known: {', '.join(sorted(model_dict))})")
    try:
        # The paper's checkpoints hold CUDA tensors: map them to the CPU to check them anywhere.
        ckpt = load_model_weights(model_dict[arch](num_classes=NUM_CLASSES), path, arch, map_location="cpu",
                                  hint="")
    except CheckpointError as e:
        raise VerifyError(str(e)) from None
    return f"{arch} checkpoint is valid" + "".join(f", {k} {v}" for k, v in summary(ckpt).items())


def summary(ckpt: dict) -> dict[str, str]:
    """The epoch and test accuracy stored next to the weights, where present and readable."""
    found = {}
    if isinstance(ckpt.get("epoch"), int):
        found["epoch"] = str(ckpt["epoch"])
    try:
        found["accuracy"] = f"{float(ckpt['accuracy']):.2f}"
    except (KeyError, TypeError, ValueError, RuntimeError):
        pass
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: verify_teacher.py CHECKPOINT ARCH", file=sys.stderr)
        return 2
    try:
        print(verify_teacher(*args))
    except VerifyError as e:
        print(" ".join(str(e).split()), file=sys.stderr)
        return 1
    except Exception as e:  # e.g. a model that fails to build: still one line for the fetch log
        print(f"cannot verify {args[0]}: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
