"""Runs a whole training job for both scripts: init stage, epochs, validation, checkpoints, logs, resume."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from helper.checkpoint import (CheckpointError, ensure_writable, load_checkpoint, save_atomic,
                               state_dict_mismatch, write_json_atomic)
from helper.distributed import (average_buffers, broadcast_state, gather_objects, parallel,
                                rank_rng_state)
from helper.errors import UserError
from helper.loops import EpochResult, grad_scaler, train_epoch, validate
from helper.progress import RunTimer, format_duration
from helper.objectives import InitObjective
from helper.util import LOG, adjust_learning_rate, options_dict, rng_state, set_rng_state

STATE_FILE = "state.pth"
PREVIOUS_STATE_FILE = "state.prev.pth"  # the state before the latest: the fallback if state.pth is damaged
DAMAGED_STATE_FILE = "state.damaged.pth"  # a damaged state.pth, set aside when a resume falls back
RESULTS_FILE = "results.json"
# What a run writes in its folder: --overwrite deletes these of an earlier run (TensorBoard events too).
RUN_FILES = (STATE_FILE, PREVIOUS_STATE_FILE, DAMAGED_STATE_FILE, RESULTS_FILE, "*_best.pth", "*_last.pth",
             "ckpt_epoch_*.pth")


class RunFolderTaken(UserError):
    """The run folder holds an earlier run and neither --resume nor --overwrite says what to do with it."""


@dataclass
class Job:
    """Everything a run needs. ``model`` is what is trained and saved (student or teacher)."""

    opt: object
    kind: str  # "teacher" or "student"
    device: torch.device
    model: nn.Module
    objective: object
    train_loader: object
    test_loader: object
    teacher: nn.Module | None = None
    distiller: nn.Module | None = None
    is_main: bool = True  # rank 0: prints, writes files
    reduce: object = None  # sums a tensor across ranks (distributed validation)
    model_name: str = ""  # architecture name used in checkpoint file names


class TensorBoard:
    """Scalars through torch.utils.tensorboard; a no-op on non-main ranks. The event file is created with the
    first scalar, so that a run with nothing left to train (a resumed finished run) leaves none behind."""

    def __init__(self, folder: str | None):
        self.folder = folder
        self.writer = None

    def log(self, name: str, value: float, step: int) -> None:
        if self.folder is None:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only where it writes

            self.writer = SummaryWriter(log_dir=self.folder, flush_secs=2)
        self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def make_optimizer(params, lr: float, opt) -> torch.optim.SGD:
    params = list(params)
    return torch.optim.SGD(params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay,
                           **sgd_kernels(params))


def sgd_kernels(params: list[torch.Tensor]) -> dict[str, bool]:
    """Multi-tensor SGD: fused on CUDA (one kernel, and GradScaler needs no host sync), foreach elsewhere
    (the same numbers as the per-parameter loop)."""
    on_cuda = bool(params) and all(p.is_cuda for p in params)
    return {"fused": True, "foreach": False} if on_cuda else {"fused": False, "foreach": True}


def use_fast_sgd(optimizer: torch.optim.SGD) -> None:
    """Re-apply sgd_kernels after load_state_dict, which restores the flags of the run that saved it."""
    for group in optimizer.param_groups:
        group.update(sgd_kernels(group["params"]))


def main_modules(job: Job) -> list[nn.Module]:
    """What the main stage trains: the student, then every trainable extra module."""
    return [job.model] + (job.distiller.trainable_modules() if job.distiller is not None else [])


def main_parameters(job: Job) -> list[nn.Parameter]:
    """Student parameters, then every trainable extra module's (one group, as the original)."""
    return [p for m in main_modules(job) for p in m.parameters()]


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


class Progress:
    """Resumable progress counters (saved in the state file)."""

    def __init__(self) -> None:
        self.init_epochs_done = 0
        self.epochs_done = 0
        self.best_acc = 0.0
        self.best_epoch = 0
        self.last = {"top1": None, "top5": None}
        self.teacher_acc = None
        self.wall_time = 0.0

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def resume_candidates(opt) -> list[Path]:
    """State files to try in order: the one named, or (``--resume auto``) this run's latest, then previous."""
    if not opt.resume:
        return []
    if opt.resume != "auto":
        return [Path(opt.resume)]
    folder = Path(opt.save_folder)
    return [path for path in (folder / STATE_FILE, folder / PREVIOUS_STATE_FILE) if path.exists()]


def check_run_folder(opt) -> None:
    """Refuse to start a run over the state, results or last checkpoint of an earlier one in its folder, unless
    --resume (continue it) or --overwrite (delete it) says so; the message offers both, and another --trial."""
    if getattr(opt, "overwrite", False) or (opt.resume and (opt.resume != "auto" or resume_candidates(opt))):
        return
    folder = Path(opt.save_folder)
    has_state = any((folder / name).exists() for name in (STATE_FILE, PREVIOUS_STATE_FILE))
    if not (has_state or (folder / RESULTS_FILE).exists() or any(folder.glob("*_last.pth"))):
        return
    try:
        results = json.loads((folder / RESULTS_FILE).read_text())
        finished, done, total = bool(results["finished"]), int(results["epochs_done"]), int(results["epochs"])
        held = f"a {'finished' if finished else 'stopped'} run ({done} of {total} epochs done)"
    except (OSError, ValueError, KeyError, TypeError):
        finished = not has_state
        held = "a finished run" if finished else "the saved state of a stopped run"
    resume = (["rerun with --resume auto to train it further (e.g. with more --epochs)"] if finished else
              ["rerun the same command with --resume auto to continue it"]) if has_state else []
    raise RunFolderTaken(f"{folder} already holds {held}: " + "; ".join(
        resume + ["give another --trial to keep it", "or add --overwrite to delete it and start again"]))


def clear_run_folder(opt) -> None:
    """--overwrite: delete what an earlier run wrote in this run's folders, so that none of it is taken for
    this run's (and --resume auto cannot go back to it)."""
    folder, tb_folder = Path(opt.save_folder), Path(opt.tb_folder)
    old = [path for pattern in RUN_FILES for path in folder.glob(pattern)]
    old += list(tb_folder.glob("events.out.tfevents.*"))
    for path in old:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise UserError(f"--overwrite: cannot delete {path}: {e.strerror or e}; fix the folder's "
                            f"permissions or delete it yourself") from None
    if old:
        LOG.info(f"==> --overwrite: deleted the {len(old)} files of the earlier run in {folder}"
                 f"{' and ' + str(tb_folder) if tb_folder.exists() else ''}")


def saved_seed(opt) -> int | None:
    """The seed of the run a resume continues (the tensor data path derives every epoch's order from it)."""
    for path in resume_candidates(opt):
        try:
            seed = load_checkpoint(path).get("opt", {}).get("seed")
        except CheckpointError:
            continue  # reported when the state itself is loaded
        return seed if isinstance(seed, int) else None
    return None


def load_resume_state(job: Job) -> tuple[Path, dict] | None:
    """The first candidate state that loads; a damaged one is reported and the next one used."""
    candidates = resume_candidates(job.opt)
    if job.opt.resume == "auto" and not candidates:
        LOG.info(f"==> --resume auto: no saved state in {job.opt.save_folder}, starting from scratch")
    damaged = []
    for path, fallback in zip(candidates, candidates[1:] + [None]):
        try:
            state = load_state(job, path)
        except CheckpointError as e:
            if fallback is None:
                raise
            LOG.warning(f"==> WARNING: {e}; resuming from the previous state {fallback} instead")
            damaged.append(path)
            continue
        if job.is_main:
            for bad in damaged:  # else the next save would rotate it into state.prev.pth, over the good one
                aside = bad.with_name(DAMAGED_STATE_FILE)
                try:
                    os.replace(bad, aside)
                except OSError as e:
                    raise CheckpointError(f"cannot move the damaged {bad} aside to {aside}: {e.strerror or e}; "
                                          f"fix the folder's permissions, or delete {bad}") from None
                LOG.warning(f"==> the damaged {bad.name} is set aside as {aside.name}, so that {path.name} "
                            f"stays the previous state")
        return path, state
    return None


def save_state(job: Job, progress: Progress, optimizers: "Optimizers", rng: list[dict] | None = None) -> None:
    """``rng``: every rank's RNG state (gather_objects), saved so that each rank of a resumed run goes on
    with its own; None: this process's. The float16 loss scaler is saved too: its scale took the run's
    whole history to settle."""
    state = {
        "kind": job.kind,
        "model": job.model.state_dict(),
        "distiller": job.distiller.state_dict() if job.distiller is not None else None,
        "optimizer": optimizers.main.state_dict(),
        "init_optimizer": optimizers.init.state_dict() if optimizers.init is not None else None,
        "scaler": optimizers.scaler.state_dict() if optimizers.scaler is not None else None,
        "progress": progress.state_dict(),
        "rng": rng_state() if rng is None else rng[0],
        "rng_ranks": rng if rng is not None and len(rng) > 1 else None,
        "opt": options_dict(job.opt),
    }
    folder = Path(job.opt.save_folder)
    save_atomic(state, folder / STATE_FILE, previous=folder / PREVIOUS_STATE_FILE)


def load_state(job: Job, path: Path) -> dict:
    try:  # on the CPU: load_state_dict copies to each module's device; the RNG states must stay CPU tensors
        state = load_checkpoint(path, map_location="cpu")
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume: {e}") from None
    if state.get("kind") != job.kind or "progress" not in state:
        raise CheckpointError(f"cannot resume from {path}: not a {job.kind} training state of this project")
    parts = [(job.model, state["model"])]
    if job.distiller is not None and state.get("distiller") is not None:
        parts.append((job.distiller, state["distiller"]))
    for module, saved in parts:  # check everything before loading anything
        problem = state_dict_mismatch(module, saved) if isinstance(saved, dict) else "no state_dict"
        if problem:
            raise CheckpointError(f"cannot resume from {path}: it was saved by another kind of run ({problem})")
    for module, saved in parts:
        module.load_state_dict(saved)
    return state


def write_results(job: Job, progress: Progress, finished: bool) -> None:
    opt = job.opt
    data = {
        "kind": job.kind,
        "model": job.model_name,
        "teacher": getattr(opt, "model_t", None) if job.kind == "student" else None,
        "distill": getattr(opt, "distill", None) if job.kind == "student" else None,
        "trial": opt.trial,  # as parsed from the command line: a string for students, an int for teachers
        "opt": options_dict(opt),
        "teacher_acc": progress.teacher_acc,
        "best_acc": progress.best_acc,
        "best_epoch": progress.best_epoch,
        "last_acc": progress.last["top1"],
        "last_acc_top5": progress.last["top5"],
        "epochs_done": progress.epochs_done,
        "epochs": opt.epochs,
        "init_epochs_done": progress.init_epochs_done,
        "finished": finished,
        "wall_time_s": round(progress.wall_time, 3),
    }
    write_json_atomic(data, Path(opt.save_folder) / RESULTS_FILE)


@dataclass
class Optimizers:
    main: torch.optim.SGD
    init: torch.optim.SGD | None  # the init stage's (AB, FT, FSP), else None
    scaler: torch.amp.GradScaler | None  # float16 autocast only


@dataclass
class Validation:
    top1: float
    top5: float
    loss: float


class EpochEnd:
    """What every epoch ends with, init stage or main stage: timing, logs, the state file and (main stage)
    the original's checkpoints and results.json. ``started`` is the epoch's start (perf_counter)."""

    def __init__(self, job: Job, progress: Progress, optimizers: Optimizers, tb: TensorBoard):
        self.job, self.progress, self.optimizers, self.tb = job, progress, optimizers, tb

    def __call__(self, stage: str, epoch: int, result: EpochResult, started: float,
                 test: Validation | None = None) -> None:
        job, progress = self.job, self.progress
        if stage == "init":
            progress.init_epochs_done = epoch
            self.tb.log("init_train_loss", result.loss, epoch)
        else:
            self.tb.log("train_acc", result.top1, epoch)
            self.tb.log("train_loss", result.loss, epoch)
            self.tb.log("learning_rate", self.optimizers.main.param_groups[0]["lr"], epoch)
            for name, value in result.terms.items():
                self.tb.log(f"loss/{name}", value, epoch)
            self.tb.log("test_acc", test.top1, epoch)
            self.tb.log("test_acc_top5", test.top5, epoch)
            self.tb.log("test_loss", test.loss, epoch)
            progress.epochs_done = epoch
            progress.last = {"top1": test.top1, "top5": test.top5}
        improved = test is not None and test.top1 > progress.best_acc
        if improved:
            progress.best_acc, progress.best_epoch = test.top1, epoch
        progress.wall_time += time.perf_counter() - started
        rng = gather_objects(rng_state())  # every rank takes part
        if job.is_main:
            if test is not None:
                save_epoch_checkpoints(job, self.optimizers.main, epoch, test.top1, improved)
            save_state(job, progress, self.optimizers, rng)
            if test is not None:
                write_results(job, progress, finished=False)


def run(job: Job) -> Progress:
    """Train ``job.model`` to the end (or from a saved state), writing the original's files. An interruption
    (Ctrl-C, SIGTERM) leaves with ``resumable`` set on it: whether a state of this run is there to resume."""
    progress = Progress()
    try:
        return _run(job, progress)
    except KeyboardInterrupt as e:
        folder = Path(job.opt.save_folder)
        e.resumable = bool(progress.epochs_done or progress.init_epochs_done) and any(
            (folder / name).exists() for name in (STATE_FILE, PREVIOUS_STATE_FILE))
        raise


def _run(job: Job, progress: Progress) -> Progress:
    opt, device = job.opt, job.device
    broadcast_state(job.model, job.distiller)  # several processes: each built them from its own seed
    init_objective = None
    if job.distiller is not None and job.distiller.has_init_stage and opt.init_epochs > 0:
        init_objective = InitObjective(job.model, job.teacher, job.distiller)
    optimizers = Optimizers(
        main=make_optimizer(main_parameters(job), opt.learning_rate, opt),
        init=None if init_objective is None else make_optimizer(init_objective.modules.parameters(),
                                                                 job.distiller.init_learning_rate(opt), opt),
        scaler=grad_scaler(device, getattr(opt, "amp", False)))
    resume(job, progress, optimizers)

    # Every input is checked by now: only from here on is anything written.
    if job.is_main:
        for folder in (opt.save_folder, opt.tb_folder):
            ensure_writable(folder)
        if getattr(opt, "overwrite", False):
            clear_run_folder(opt)
    tb = TensorBoard(opt.tb_folder if job.is_main else None)
    end_epoch = EpochEnd(job, progress, optimizers, tb)
    init_left = opt.init_epochs - progress.init_epochs_done if init_objective is not None else 0
    timer = RunTimer(max(init_left, 0) + max(opt.epochs - progress.epochs_done, 0))
    if init_left > 0:
        left = f", {init_left} left" if init_left < opt.init_epochs else ""
        LOG.info(f"==> init stage of {opt.distill} (before distillation, --init_epochs): "
                 f"{_epochs(opt.init_epochs)}{left} at lr {optimizers.init.param_groups[0]['lr']}")
        init_step = parallel(init_objective, init_objective.modules, opt, unused_parameters=True)
        for epoch in range(progress.init_epochs_done + 1, opt.init_epochs + 1):
            started = time.perf_counter()
            job.train_loader.set_epoch(-epoch)  # init epochs get their own shuffles
            result = train_epoch(epoch, job.train_loader, init_step, optimizers.init, opt, device,
                                 stage="init", scaler=optimizers.scaler, timer=timer)
            average_buffers(init_objective.modules)
            end_epoch("init", epoch, result, started)
            seconds = time.perf_counter() - started
            timer.epoch_done(seconds)
            LOG.info(f"==> init epoch {epoch}/{opt.init_epochs}: {seconds:.1f}s, "
                     f"{result.images / max(result.seconds, 1e-9):.0f} images/s, init loss {result.loss:.4f}, "
                     f"ETA {format_duration(timer.eta())}")

    if job.kind == "student" and progress.teacher_acc is None:
        teacher_acc, _, _ = validate(job.test_loader, job.teacher, device, opt, job.reduce)
        progress.teacher_acc = teacher_acc
        LOG.info(f"teacher accuracy: {teacher_acc:.3f}")

    run_start_epoch = progress.epochs_done + 1
    if progress.epochs_done:
        LOG.info(f"==> continuing at epoch {run_start_epoch}/{opt.epochs}")
    objective = parallel(job.objective, main_modules(job), opt)
    for epoch in range(run_start_epoch, opt.epochs + 1):
        started = time.perf_counter()
        lr = adjust_learning_rate(epoch, opt, optimizers.main)
        LOG.info("==> training...")
        job.train_loader.set_epoch(epoch)
        result = train_epoch(epoch, job.train_loader, objective, optimizers.main, opt, device,
                             scaler=optimizers.scaler, timer=timer)
        average_buffers(*main_modules(job))  # so that every rank validates (and rank 0 saves) one model
        test = Validation(*validate(job.test_loader, job.model, device, opt, job.reduce))
        end_epoch("main", epoch, result, started, test)
        seconds = time.perf_counter() - started  # the epoch's one timing: training, validation and saving
        timer.epoch_done(seconds)
        ips = result.images / max(result.seconds, 1e-9)
        LOG.info(f"==> epoch {epoch}/{opt.epochs}: {seconds:.1f}s, {ips:.0f} images/s, "
                 f"train loss {result.loss:.4f}, test acc {test.top1:.2f} (best {progress.best_acc:.2f}), "
                 f"lr {lr:g}, ETA {format_duration(timer.eta())}")

    LOG.info(f"best accuracy: {progress.best_acc:.3f}")
    if job.is_main:
        last = {"opt": options_dict(opt), "model": job.model.state_dict()}
        if job.kind == "teacher":
            last["optimizer"] = optimizers.main.state_dict()
        save_atomic(last, Path(opt.save_folder) / f"{job.model_name}_last.pth")
        write_results(job, progress, finished=True)
    tb.close()
    return progress


def resume(job: Job, progress: Progress, optimizers: Optimizers) -> None:
    """Under --resume, load the saved state into the models, ``progress``, the optimizers and the RNGs."""
    resumed = load_resume_state(job)
    if resumed is None:
        return
    resume_path, state = resumed
    progress.load_state_dict(state["progress"])
    for optimizer, key in ((optimizers.main, "optimizer"), (optimizers.init, "init_optimizer")):
        if optimizer is not None and state.get(key) is not None:
            optimizer.load_state_dict(state[key])
            use_fast_sgd(optimizer)
    if optimizers.scaler is not None and state.get("scaler"):
        optimizers.scaler.load_state_dict(state["scaler"])
    set_rng_state(rank_rng_state(state))
    LOG.info(f"==> resumed from {resume_path}: init epochs done {progress.init_epochs_done}, "
             f"epochs done {progress.epochs_done}/{job.opt.epochs}")


def save_epoch_checkpoints(job: Job, optimizer, epoch: int, test_acc: float, improved: bool) -> None:
    """The original's files: ``<model>_best.pth`` on improvement, ``ckpt_epoch_N.pth`` every save_freq."""
    folder = Path(job.opt.save_folder)
    extra = {"optimizer": optimizer.state_dict()} if job.kind == "teacher" else {}
    if improved:
        save_atomic({"epoch": epoch, "model": job.model.state_dict(), "best_acc": test_acc, **extra},
                    folder / f"{job.model_name}_best.pth")
    if epoch % job.opt.save_freq == 0:
        LOG.info("==> Saving...")
        save_atomic({"epoch": epoch, "model": job.model.state_dict(), "accuracy": test_acc, **extra},
                    folder / f"ckpt_epoch_{epoch}.pth")
