"""Several processes under torchrun (PyTorch DDP): the process group, rank helpers, reductions, and the
DDP-wrapped objective.

    torchrun --nproc_per_node 4 train_student.py ...   (NCCL on CUDA, gloo on the CPU)

Each rank trains on its own shard of every epoch with ``--batch_size`` images per step; the gradients of
everything a stage trains go through one DDP module (one all-reduce per step); rank 0 prints and writes
the files. Outside torchrun, or with one process, nothing is initialised and every helper is a no-op.
"""
from __future__ import annotations

import datetime
import inspect
import os
from collections.abc import Sequence
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from helper.errors import UserError
from helper.loops import StepOutput
from helper.util import LOG


class DistributedError(UserError, RuntimeError):
    """The process group cannot be formed or used as asked (the message names the flag to change)."""


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that prints and writes files."""
    return rank() == 0


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, local_rank, world_size) from the variables torchrun sets, or None outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        raise DistributedError("WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers; start "
                               "the scripts with torchrun (python -m torch.distributed.run)") from None


def choose_device(requested: str | None, local_rank: int | None = None) -> torch.device:
    """The device this process trains on, always with an index when it is a GPU.

    ``requested`` is ``--device``: None picks CUDA when it is available, else the CPU. A CUDA device without
    an index (None or ``cuda``) becomes ``cuda:LOCAL_RANK`` under torchrun (``local_rank``, one GPU per
    process) and ``cuda:<current device>`` otherwise; ``cuda:i`` is kept (under torchrun only ``i ==
    LOCAL_RANK``). ``torch.cuda.set_device`` and NCCL need the index.
    """
    cuda = torch.cuda.is_available()
    if requested is None:
        requested = "cuda" if cuda else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"--device {requested!r} is not a device name (e.g. cpu, cuda, cuda:1)") from None
    if device.type != "cuda":
        return device
    if not cuda:
        raise UserError(f"--device {requested}: CUDA is not available on this machine (use --device cpu)")
    count = torch.cuda.device_count()
    if local_rank is not None:
        if device.index is not None and device.index != local_rank:
            raise DistributedError(f"--device {requested} would put several processes on one GPU; under torchrun "
                                   f"leave --device out (or pass --device cuda): each process uses "
                                   f"cuda:LOCAL_RANK")
        if local_rank >= count:
            raise DistributedError(f"LOCAL_RANK {local_rank} has no GPU: {count} CUDA device(s) visible; start "
                                   f"at most {count} processes per machine (--nproc_per_node {count})")
        return torch.device("cuda", local_rank)
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= count:
        raise UserError(f"--device {requested}: only {count} CUDA device(s) visible (cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def init_distributed(opt) -> None:
    """Join torchrun's process group when started by it with several processes.

    Sets ``opt.rank``, ``opt.world_size``, ``opt.is_main``, and gives every
    rank rank 0's ``opt.seed`` (a seed drawn at random differs per process, the data shards must not).
    """
    opt.rank, opt.world_size, opt.is_main = 0, 1, True
    env = torchrun_env()
    if env is None or env[2] == 1:
        if getattr(opt, "sync_bn", False):
            LOG.warning("--sync_bn has no effect in a single process (plain BatchNorm)")
        return
    this_rank, local_rank, world = env
    if getattr(opt, "skip_nonfinite", False):
        raise DistributedError("--skip_nonfinite is not supported with several processes: a batch skipped on "
                               "one rank only would desynchronise the gradient all-reduce")
    device = torch.device(opt.device)  # cuda:LOCAL_RANK (choose_device), already made current
    try:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=this_rank,
                                    world_size=world, timeout=datetime.timedelta(minutes=opt.dist_timeout))
    except (RuntimeError, ValueError) as e:  # DistStoreError/DistNetworkError on timeouts and bad addresses
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise DistributedError(f"rank {this_rank} of {world} could not form the process group at {where} within "
                               f"--dist_timeout {opt.dist_timeout:g} min ({_first_line(e)}); did every "
                               f"process start?") from None
    opt.rank, opt.world_size, opt.is_main = this_rank, world, this_rank == 0
    opt.seed = broadcast_object(opt.seed)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def cleanup() -> None:
    """Leave the process group (the scripts call it in a ``finally``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_global_batch(opt, n_data: int) -> None:
    """Refuse more images per step (over all ranks) than the training set holds: ranks would only repeat."""
    world = getattr(opt, "world_size", 1)
    if world > 1 and opt.batch_size * world > n_data:
        raise DistributedError(f"--batch_size {opt.batch_size} per process x {world} processes = "
                               f"{opt.batch_size * world} images per step, more than the {n_data} training "
                               f"images; lower --batch_size (it is per process) or start fewer processes")


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks (in place); unchanged in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def broadcast_state(*modules: nn.Module | None) -> None:
    """Copy rank 0's parameters and buffers to every rank (each rank builds its models from its own seed;
    DDP syncs what it wraps, this covers the rest, e.g. CRD's memory bank)."""
    if not is_distributed():
        return
    for module in modules:
        if module is not None:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)


@torch.no_grad()
def average_buffers(*modules: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks, so that every rank
    validates, and rank 0 saves, the same model."""
    if not is_distributed():
        return
    world = world_size()
    for module in modules:
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(world)


def rank_rng_state(state: dict) -> dict:
    """This rank's RNG state from a saved training state: its own entry of ``rng_ranks`` when the run had
    as many processes, else the saved (rank 0) ``rng``."""
    per_rank = state.get("rng_ranks")
    if per_rank is not None and len(per_rank) == world_size():
        return per_rank[rank()]
    saved = len(per_rank) if per_rank is not None else 1
    if saved != world_size():
        LOG.warning(f"resuming with {world_size()} process(es) a state saved by {saved}: the random streams "
                    f"continue from rank 0's, so data order and augmentation differ from an uninterrupted run")
    return state["rng"]


def _no_buffer_sync_per_forward() -> dict[str, bool]:
    """DDP keywords that skip broadcasting rank 0's buffers at every forward (average_buffers runs once per
    epoch instead); torch 2.14 renamed the flag."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class _Step(nn.Module):
    """What DDP wraps: the modules a stage trains; the forward runs the stage's objective on a batch."""

    def __init__(self, objective, modules: Sequence[nn.Module]):
        super().__init__()
        self.trained = nn.ModuleList(modules)
        self.objective = objective  # not a module: the teacher and frozen parts stay outside DDP

    def forward(self, batch):
        out = self.objective(batch)
        return out.loss, out.logits, out.terms  # plain containers, in which DDP finds the tensors


class DistributedObjective:
    """An objective whose trained modules form one DDP module: gradients are all-reduced once per step."""

    def __init__(self, objective, modules: Sequence[nn.Module], *, unused_parameters: bool):
        self.objective = objective
        # A static graph lets DDP learn once which parameters get no gradient, instead of searching the
        # autograd graph at every step (find_unused_parameters).
        self.ddp = DistributedDataParallel(_Step(objective, modules), static_graph=unused_parameters,
                                           **_no_buffer_sync_per_forward())

    def begin_epoch(self, epoch: int) -> None:
        self.objective.begin_epoch(epoch)

    def snapshot(self, batch) -> Callable[[], None]:
        return self.objective.snapshot(batch)

    def __call__(self, batch):
        loss, logits, terms = self.ddp(batch)
        return StepOutput(loss, logits, terms)


def parallel(objective, modules: Sequence[nn.Module], opt, *, unused_parameters: bool = False):
    """``objective`` with ``modules`` (all a stage trains) wrapped in DDP; ``objective`` itself in a single
    process. ``--sync_bn`` converts their BatchNorm layers (same state_dict keys). ``unused_parameters``:
    some of ``modules`` may get no gradient (the init stages train blocks of the student)."""
    if not is_distributed():
        return objective
    if getattr(opt, "sync_bn", False):
        modules = [nn.SyncBatchNorm.convert_sync_batchnorm(module) for module in modules]
    return DistributedObjective(objective, modules, unused_parameters=unused_parameters)
