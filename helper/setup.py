"""Setup shared by both scripts: device, seeds, data, models, output folders, and clean error exits."""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shlex
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from helper.distributed import check_global_batch, cleanup as cleanup_distributed, init_distributed
from helper.util import LOG, seed_everything, setup_logging


class SetupError(RuntimeError):
    """A bad input found before training starts (the message says what and what to do)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is the whole story: printed without a traceback."""
    from dataset import DatasetError
    from helper.checkpoint import CheckpointError
    from helper.distributed import DistributedError
    from helper.loops import NonFiniteLossError

    return (SetupError, CheckpointError, DatasetError, NonFiniteLossError, DistributedError, ValueError)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: training stops where it is (the last epoch-end state is already saved)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into ``Interrupted`` (a KeyboardInterrupt, so DataLoader workers ignore it)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def resume_command(script: str, argv: list[str]) -> str:
    """The same command line with ``--resume auto`` in place of any ``--resume`` it had."""
    world_size = env_int("WORLD_SIZE", 1)
    launcher = ["python"] if world_size == 1 else ["torchrun", "--nproc_per_node",
                                                   str(env_int("LOCAL_WORLD_SIZE", world_size))]
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--resume":
            skip = True
        elif not word.startswith("--resume="):
            kept.append(word)
    return shlex.join([*launcher, script, *kept, "--resume", "auto"])


def cli(main: Callable[[list[str] | None], object]) -> Callable[[list[str] | None], int]:
    """Wrap a script's main: a user error prints one line (no traceback) and exits 1; SIGINT/SIGTERM
    stop training, print how to resume and exit 130/143."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            with stop_on_signals():
                main(argv)
        except user_errors() as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except Interrupted as e:
            if env_int("RANK", 0) != 0:  # one message per job
                return 128 + e.signum
            script = sys.argv[0] if argv is None else Path(inspect.getfile(main)).name
            args = sys.argv[1:] if argv is None else list(argv)
            print(f"interrupted by {signal.Signals(e.signum).name}: training stopped; the state saved at the end "
                  f"of the last finished epoch (state.pth in the run folder) is kept. Resume with:\n"
                  f"  {resume_command(script, args)}", file=sys.stderr)
            return 128 + e.signum
        finally:
            cleanup_distributed()
        return 0

    return wrapped


def prepare_run(opt) -> torch.device:
    """Process group (under torchrun), logging, seeds and cuDNN settings (output folders are made later,
    once every input is checked)."""
    init_distributed(opt)
    setup_logging(getattr(opt, "is_main", True))
    if opt.lr_override:
        LOG.info(opt.lr_override)
    if opt.resume:
        from helper.engine import saved_seed  # engine imports this module

        seed = saved_seed(opt)
        if seed is not None and seed != opt.seed:
            LOG.info(f"==> resuming a run seeded with {seed}: using that seed (not {opt.seed})")
            opt.seed = seed
    device = torch.device(opt.device)
    seed_everything(opt.seed + getattr(opt, "rank", 0), opt.deterministic)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not opt.deterministic
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

    loaders = build_loaders(
        opt.data_folder, opt.data_backend, opt.batch_size, opt.num_workers, device,
        instance=instance, crd_k=crd_k, crd_mode=getattr(opt, "mode", "exact"), seed=opt.seed,
        rank=getattr(opt, "rank", 0), world_size=getattr(opt, "world_size", 1))
    check_global_batch(opt, loaders[2])
    return loaders


def to_channels_last(opt, *models: nn.Module) -> None:
    """Under --channels_last, store every 4-D parameter and buffer of ``models`` as channels_last (NHWC)."""
    if opt.channels_last:
        for model in models:
            model.to(memory_format=torch.channels_last)


def _tensors(out) -> list[torch.Tensor]:
    """The tensors of a model output: logits, or ``(features, logits)``."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for part in out for t in _tensors(part)]
    return []


class CompiledModule:
    """Runs ``module`` through torch.compile; if compiling fails (when wrapping, at a call, or in the first
    backward) it warns once and runs ``module`` eagerly from then on.

    Only a runner for the objectives: train()/eval() reach ``module``, and checkpoints save ``module``
    itself, so state_dict keys keep their names (no ``_orig_mod.`` prefix).
    """

    def __init__(self, module: nn.Module, mode: str = "default", backend: str | Callable = "inductor"):
        self.module = module
        self.compiled: Callable | None = None
        self.verified = False  # one call (with its backward, under grad) went through the compiled code
        try:
            self.compiled = torch.compile(module, mode=mode, backend=backend)
        except Exception as e:  # compile support varies by platform/version
            self._fall_back(e)

    def train(self, mode: bool = True) -> "CompiledModule":
        self.module.train(mode)
        return self

    def eval(self) -> "CompiledModule":
        return self.train(False)

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.module(*args, **kwargs)
        if self.verified:
            try:
                return self.compiled(*args, **kwargs)
            except torch._dynamo.exc.TorchDynamoException as e:  # a recompilation (new shape/mode) failed
                self._fall_back(e)
                return self.module(*args, **kwargs)
        buffers = [b.detach().clone() for b in self.module.buffers()]
        try:
            out = self.compiled(*args, **kwargs)
            if torch.is_grad_enabled():
                self._compile_backward(out)
        except Exception as e:  # first call: any failure means the compiled path cannot be trusted
            with torch.no_grad():  # undo the BatchNorm statistics update of a half-finished compiled call
                for buffer, saved in zip(self.module.buffers(), buffers):
                    buffer.copy_(saved)
            self._fall_back(e)
            return self.module(*args, **kwargs)
        self.verified = True
        return out

    def _compile_backward(self, out) -> None:
        """The backward graph is compiled lazily, at the first backward: run it now (zero gradients,
        nothing accumulated, the graph kept for the real backward) so that a failure is caught here."""
        outputs = [t for t in _tensors(out) if t.requires_grad]
        params = [p for p in self.module.parameters() if p.requires_grad]
        if outputs and params:
            torch.autograd.grad(outputs, params, grad_outputs=[torch.zeros_like(t) for t in outputs],
                                retain_graph=True, allow_unused=True)

    def _fall_back(self, error: Exception) -> None:
        self.compiled = None
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        LOG.warning(f"--compile: torch.compile failed for {type(self.module).__name__} "
                    f"({type(error).__name__}: {first_line}); running it eagerly")


def maybe_compile(opt, model: nn.Module) -> nn.Module | CompiledModule:
    """``model`` itself, or under --compile [MODE] a CompiledModule running it (eager fallback on failure)."""
    if not opt.compile:
        return model
    return CompiledModule(model, mode=opt.compile)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))
