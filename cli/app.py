"""The scripts' wrapper: one-line user errors, SIGINT/SIGTERM with the resume command, and run preparation."""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

import torch

from helper.distributed import cleanup as cleanup_distributed, init_distributed
from helper.engine import check_run_folder, saved_seed
from helper.errors import UserError
from helper.util import LOG, clear_live_line, seed_everything, setup_logging


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


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def rerun_command(script: str, argv: list[str]) -> str:
    """The command line that ran ``script`` with ``argv`` (under torchrun when it was)."""
    world_size = env_int("WORLD_SIZE", 1)
    launcher = ["python"] if world_size == 1 else ["torchrun", "--nproc_per_node",
                                                   str(env_int("LOCAL_WORLD_SIZE", world_size))]
    return shlex.join([*launcher, script, *argv])


def resume_command(script: str, argv: list[str]) -> str:
    """The same command line with ``--resume auto`` in place of any ``--resume`` it had (and without
    ``--overwrite``, which would delete what it resumes)."""
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--resume":
            skip = True
        elif not word.startswith("--resume=") and word != "--overwrite":
            kept.append(word)
    return rerun_command(script, [*kept, "--resume", "auto"])


def cli(main: Callable[[list[str] | None], object]) -> Callable[[list[str] | None], int]:
    """Wrap a script's main: a UserError prints one line (no traceback) and exits 1; SIGINT/SIGTERM stop
    training, print how to resume and exit 130/143. Any other exception keeps its traceback: it is a bug."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            with stop_on_signals():
                main(argv)
        except UserError as e:
            clear_live_line()
            print(f"error: {e}", file=sys.stderr)
            return 1
        except Interrupted as e:
            clear_live_line()
            if env_int("RANK", 0) != 0:  # one message per job
                return 128 + e.signum
            script = sys.argv[0] if argv is None else Path(inspect.getfile(main)).name
            args = sys.argv[1:] if argv is None else list(argv)
            name = signal.Signals(e.signum).name
            # Set by engine.run; stopped before training started, a state named by --resume is still there.
            resumable = getattr(e, "resumable", any(word.split("=")[0] == "--resume" for word in args))
            if resumable:
                print(f"interrupted by {name}: training stopped; the state saved at the end of the last "
                      f"finished epoch (state.pth in the run folder) is kept. Resume with:\n"
                      f"  {resume_command(script, args)}", file=sys.stderr)
            else:
                print(f"interrupted by {name} before the first epoch ended: no state was saved, so there is "
                      f"nothing to resume. Start again with the same command:\n"
                      f"  {rerun_command(script, args)}", file=sys.stderr)
            return 128 + e.signum
        finally:
            cleanup_distributed()
        return 0

    return wrapped


def prepare_run(opt) -> torch.device:
    """This process's GPU made current, the process group (under torchrun), logging, seeds and cuDNN settings
    (output folders are made later, once every input is checked). An earlier run in the run folder is refused
    unless --resume or --overwrite says what to do with it."""
    check_run_folder(opt)
    device = torch.device(opt.device)  # indexed when CUDA (choose_device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the process group: NCCL binds each rank to the current GPU
    init_distributed(opt)
    setup_logging(getattr(opt, "is_main", True))
    if opt.lr_override:
        LOG.info(opt.lr_override)
    if opt.resume:
        seed = saved_seed(opt)
        if seed is not None and seed != opt.seed:
            LOG.info(f"==> resuming a run seeded with {seed}: using that seed (not {opt.seed})")
            opt.seed = seed
    seed_everything(opt.seed + getattr(opt, "rank", 0), opt.deterministic)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not opt.deterministic
    return device
