"""Small training utilities: meters, accuracy, the step learning-rate schedule, logging, seeding."""
from __future__ import annotations

import ast
import logging
import os
import random
import sys

import numpy as np
import torch

LOG = logging.getLogger("repdistiller")


class _StdoutHandler(logging.StreamHandler):
    """Writes to the current ``sys.stdout`` (like print), not the one seen at setup: that one may be closed."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        clear_live_line()  # a message replaces the progress bar; the bar comes back at its next redraw
        super().emit(record)


_live_line = False  # a progress bar (no newline) is on the terminal's last line


def show_live_line(text: str) -> None:
    """Draw ``text`` over the terminal's last line (the progress bar); the next log message clears it."""
    global _live_line
    sys.stdout.write(f"\r{text}\x1b[K")
    sys.stdout.flush()
    _live_line = True


def clear_live_line() -> None:
    """Erase the progress bar, if one is drawn, so that the next output starts on a clean line."""
    global _live_line
    if _live_line:
        _live_line = False
        sys.stdout.write("\r\x1b[K")
        sys.stdout.flush()


def setup_logging(enabled: bool = True) -> None:
    """Plain ``print``-like console output (message only) for the scripts; silent when not enabled."""
    root = logging.getLogger()
    if not any(getattr(h, "_repdistiller", False) for h in root.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._repdistiller = True
        root.addHandler(handler)
    root.setLevel(logging.INFO if enabled else logging.WARNING)


class AverageMeter:
    """Running average that stays on the device: no host sync until ``avg``/``val`` is read."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._val: torch.Tensor | float = 0.0
        self._sum: torch.Tensor | float = 0.0
        self.count = 0

    def update(self, val: torch.Tensor | float, n: int = 1) -> None:
        if isinstance(val, torch.Tensor):
            val = val.detach().float().reshape(())
        self._val = val
        self._sum = self._sum + val * n
        self.count += n

    @property
    def val(self) -> float:
        return float(self._val)

    @property
    def sum(self) -> float:
        return float(self._sum)

    @property
    def avg(self) -> float:
        return float(self._sum) / max(self.count, 1)


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[torch.Tensor]:
    """Percentage of samples whose target is among the top-k predictions, for each k (0-d tensors)."""
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, dim=1, largest=True, sorted=True).indices  # (B, maxk)
    correct = pred.eq(target.view(-1, 1))
    batch = target.shape[0]
    return [correct[:, :min(k, maxk)].any(dim=1).float().sum() * (100.0 / batch) for k in topk]


def parse_decay_epochs(text: str) -> list[int]:
    """'150,180,210' -> [150, 180, 210]; ValueError naming the flag otherwise."""
    try:
        epochs = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--lr_decay_epochs {text!r} is not a comma-separated list of integers "
                         f"(e.g. '150,180,210')") from None
    if any(e <= 0 for e in epochs):
        raise ValueError(f"--lr_decay_epochs {text!r}: epochs must be positive")
    return epochs


def learning_rate_at(epoch: int, opt) -> float | None:
    """Step schedule of the original: decayed lr once ``epoch`` is strictly past a decay epoch, else None
    (None = keep the optimizer's current lr, exactly as the original leaves it untouched)."""
    steps = sum(epoch > e for e in opt.lr_decay_epochs)
    if steps > 0:
        return opt.learning_rate * (opt.lr_decay_rate ** steps)
    return None


def adjust_learning_rate(epoch: int, opt, optimizer: torch.optim.Optimizer) -> float:
    """Apply the step schedule at the start of ``epoch``; return the lr in effect."""
    lr = learning_rate_at(epoch, opt)
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    return optimizer.param_groups[0]["lr"]


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` also force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    """Every global RNG state, for resumable checkpoints (tensors and plain types only)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].cpu().numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    random.setstate(_tuplify(ast.literal_eval(state["python"])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _tuplify(value):
    if isinstance(value, (list, tuple)):
        return tuple(_tuplify(v) for v in value)
    return value


def options_dict(opt) -> dict:
    """Options as plain JSON-able types (so checkpoints load with weights_only=True)."""
    out = {}
    for key, value in vars(opt).items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = list(value)
        else:
            out[key] = str(value)
    return out
