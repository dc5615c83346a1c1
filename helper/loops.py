"""The one training loop (teacher, init stage and student all use it) and the one validation loop."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from helper.errors import UserError
from helper.progress import EpochProgress, RunTimer
from helper.util import LOG, AverageMeter, accuracy


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN/inf loss; the message names the epoch, iteration and loss term."""


@dataclass
class StepOutput:
    loss: torch.Tensor  # the scalar that is back-propagated
    logits: torch.Tensor | None  # student logits (None in the init stage: no accuracy there)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # named parts of the loss, unweighted


class Objective(Protocol):
    """What one stage optimises: sets train/eval modes (and the epoch) once per epoch, computes a batch's
    loss, and saves what a forward changes outside autograd so that a skipped batch can be undone."""

    def begin_epoch(self, epoch: int) -> None: ...

    def snapshot(self, batch: Batch) -> Callable[[], None]: ...

    def __call__(self, batch: Batch) -> StepOutput: ...


@dataclass
class EpochResult:
    top1: float
    top5: float
    loss: float
    terms: dict[str, float]
    seconds: float
    images: int
    skipped: int = 0


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast where the device supports it, fp16 on older GPUs; a no-op when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype(device))


def amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler | None:
    """A loss scaler where autocast runs in float16 (its gradients underflow); None for bf16 and float32."""
    if amp and amp_dtype(device) == torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def to_device(batch: Batch, device: torch.device, opt) -> Batch:
    """``batch`` on ``device``, its images in channels_last memory format under --channels_last."""
    batch = batch.to(device)
    if getattr(opt, "channels_last", False):
        batch = dataclasses.replace(batch, images=batch.images.contiguous(memory_format=torch.channels_last))
    return batch


def uses_cuda_graphs(opt) -> bool:
    """--compile modes that record CUDA graphs (ignored by torch on a CPU)."""
    return getattr(opt, "compile", None) in ("reduce-overhead", "max-autotune")


def _first_nonfinite(out: StepOutput) -> str | None:
    for name, value in out.terms.items():
        if not torch.isfinite(value.detach()).all():
            return name
    return None if torch.isfinite(out.loss.detach()).all() else "total"


def train_epoch(epoch: int, loader: Iterable[Batch], objective: Objective, optimizer: torch.optim.Optimizer,
                opt, device: torch.device, *, stage: str = "train",
                scaler: torch.amp.GradScaler | None = None,
                on_batch_end: Callable[[int], None] | None = None,
                timer: RunTimer | None = None) -> EpochResult:
    """Train one epoch and return its averages. Progress: the original's line every ``print_freq`` batches
    (with the speed and the ETAs of the epoch and, given ``timer``, of the run), or a live bar on a terminal."""
    objective.begin_epoch(epoch)
    batch_time, data_time = AverageMeter(), AverageMeter()
    losses, top1, top5 = AverageMeter(), AverageMeter(), AverageMeter()
    terms: dict[str, AverageMeter] = {}
    n_batches = len(loader)
    skipped = 0
    check_every_step = getattr(opt, "skip_nonfinite", False)
    mark_cuda_graph_step = uses_cuda_graphs(opt)
    progress = EpochProgress(f"epoch {epoch}" if stage == "train" else f"{stage} epoch {epoch}", n_batches,
                             opt.print_freq, timer)
    start = end = time.perf_counter()
    for idx, batch in enumerate(loader):
        batch = to_device(batch, device, opt)
        data_time.update(time.perf_counter() - end)
        n = len(batch)
        if mark_cuda_graph_step:  # a new iteration: the graphs may reuse the memory of the last step's outputs
            torch.compiler.cudagraph_mark_step_begin()
        # --skip_nonfinite: what the forward writes outside autograd (BatchNorm statistics, CRD bank rows)
        # is saved first, so that a bad batch leaves no trace.
        undo = objective.snapshot(batch) if check_every_step else None
        with autocast_context(device, getattr(opt, "amp", False)):
            out = objective(batch)
        if undo is not None:
            bad = _first_nonfinite(out)
            if bad is not None:
                skipped += 1
                undo()
                LOG.warning(f"epoch {epoch} iter {idx}: non-finite loss ({bad}); batch skipped and its BatchNorm "
                            f"statistics and memory rows restored (--skip_nonfinite)")
                optimizer.zero_grad(set_to_none=True)
                end = time.perf_counter()
                continue
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(out.loss.sum()).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            out.loss.sum().backward()
            optimizer.step()
        losses.update(out.loss, n)
        for name, value in out.terms.items():
            terms.setdefault(name, AverageMeter()).update(value, n)
        if out.logits is not None:
            acc1, acc5 = accuracy(out.logits.detach(), batch.labels, topk=(1, 5))
            top1.update(acc1, n)
            top5.update(acc5, n)
        batch_time.update(time.perf_counter() - end)
        end = time.perf_counter()
        progress.step(n)
        if progress.due(idx):
            # The only host sync of the loop (one per report): checking the loss here costs nothing extra.
            if not check_every_step and not math.isfinite(losses.val):
                raise NonFiniteLossError(_nonfinite_message(epoch, idx, out, stage))
            if out.logits is not None:
                line = (f"Epoch: [{epoch}][{idx}/{n_batches}]\t"
                        f"Time {batch_time.val:.3f} ({batch_time.avg:.3f})\t"
                        f"Data {data_time.val:.3f} ({data_time.avg:.3f})\t"
                        f"Loss {losses.val:.4f} ({losses.avg:.4f})\t"
                        f"Acc@1 {top1.val:.3f} ({top1.avg:.3f})\t"
                        f"Acc@5 {top5.val:.3f} ({top5.avg:.3f})")
                progress.report(idx, line, losses.avg)
            else:
                progress.report(idx, f"Init [{epoch}][{idx}/{n_batches}]\tLoss {losses.val:.4f} ({losses.avg:.4f})",
                                losses.avg)
        if on_batch_end is not None:
            on_batch_end(idx)
    if losses.count and not math.isfinite(losses.avg):
        # A NaN between two prints: find the term now (one sync per epoch).
        raise NonFiniteLossError(_nonfinite_message(epoch, n_batches - 1, out, stage, approximate=True))
    if n_batches and skipped == n_batches:
        raise NonFiniteLossError(f"every batch of {stage} epoch {epoch} gave a non-finite loss (all skipped by "
                                 f"--skip_nonfinite); the last good checkpoint is kept. Lower the learning rate "
                                 f"or the weight of the failing term.")
    seconds = time.perf_counter() - start
    return EpochResult(top1.avg, top5.avg, losses.avg, {k: m.avg for k, m in terms.items()}, seconds,
                       losses.count, skipped)


def _nonfinite_message(epoch: int, idx: int, out: StepOutput, stage: str, approximate: bool = False) -> str:
    term = _first_nonfinite(out) or "total"
    where = f"by iteration {idx}" if approximate else f"at iteration {idx}"
    return (f"loss became non-finite in {stage} epoch {epoch} {where} (term: {term}). The last good "
            f"checkpoint is kept; lower the learning rate / the term's weight, or pass --skip_nonfinite.")


@torch.no_grad()
def validate(loader: Iterable[Batch], model: nn.Module, device: torch.device, opt,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
             verbose: bool = True) -> tuple[float, float, float]:
    """Top-1, top-5 (percent) and mean CE loss over the whole loader. ``reduce`` sums across ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss_sum, count
    for batch in loader:
        batch = to_device(batch, device, opt)
        with autocast_context(device, getattr(opt, "amp", False)):
            output = model(batch.images)
        output = output.float()
        n = len(batch)
        acc1, acc5 = accuracy(output, batch.labels, topk=(1, 5))
        loss = F.cross_entropy(output, batch.labels)
        # The count joins as a tensor op: torch.tensor(n, device=cuda) would be a blocking copy.
        totals += torch.stack([acc1 * n / 100, acc5 * n / 100, loss * n, loss.new_full((), n)]).to(totals.dtype)
    if reduce is not None:
        totals = reduce(totals)
    c1, c5, loss_sum, count = totals.tolist()
    count = max(count, 1.0)
    top1, top5, loss = 100 * c1 / count, 100 * c5 / count, loss_sum / count
    if verbose:
        LOG.info(f" * Acc@1 {top1:.3f} Acc@5 {top5:.3f}")
    model.train(was_training)
    return top1, top5, loss
