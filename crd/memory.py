"""The CRD memory bank (Tian et al., ICLR 2020) and the alias sampler for its negatives."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

LOG = logging.getLogger(__name__)


class AliasMethod(nn.Module):
    """Walker's alias method: O(1) draws from a discrete distribution (Kronmal & Peterson, 1979).

    The tables are non-persistent buffers: they follow ``.to(device)`` and stay out of ``state_dict``.
    """

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        probs = probs.detach().float().cpu()
        if probs.sum() > 1:
            probs = probs / probs.sum()
        K = len(probs)
        # float32 throughout, like the original's tensor arithmetic (uniform n=50000 gives exactly 1.0).
        prob = (probs * K).numpy().copy()
        alias = np.zeros(K, dtype=np.int64)
        smaller = np.flatnonzero(prob < 1.0).tolist()
        larger = np.flatnonzero(prob >= 1.0).tolist()
        one = np.float32(1.0)
        while smaller and larger:
            small, large = smaller.pop(), larger.pop()
            alias[small] = large
            prob[large] = (prob[large] - one) + prob[small]
            (smaller if prob[large] < one else larger).append(large)
        prob[smaller + larger] = one
        self.register_buffer("prob", torch.from_numpy(prob), persistent=False)
        self.register_buffer("alias", torch.from_numpy(alias), persistent=False)

    def draw(self, N: int) -> torch.Tensor:
        """N indices in [0, K), on the tables' device."""
        K = self.alias.size(0)
        kk = torch.empty(N, dtype=torch.long, device=self.prob.device).random_(0, K)
        b = torch.bernoulli(self.prob.index_select(0, kk)).long()
        return kk * b + self.alias.index_select(0, kk) * (1 - b)


class LogScores(NamedTuple):
    """CRD scores in log space: the normalised score of column k of row b is exp(logits[b, k] - log_z)."""

    logits: torch.Tensor  # (B, K+1): <bank row, v> / T, the positive in column 0
    log_z: float  # log of the normalisation constant Z

    def probabilities(self) -> torch.Tensor:
        return (self.logits - self.log_z).exp()


class Constants(NamedTuple):
    """The entries of ContrastMemory's ``params`` buffer, in its order (Z < 0 until the first batch sets it)."""

    K: int  # negatives per positive
    T: float  # temperature
    Z_v1: float  # normalisation constant of the student embedding's scores (against the teacher bank)
    Z_v2: float  # ... of the teacher embedding's scores (against the student bank)
    momentum: float  # of the bank update

    @classmethod
    def read(cls, params: torch.Tensor) -> Constants:
        """The buffer as Python floats (one host sync)."""
        constants = cls(*params.tolist())
        return constants._replace(K=int(constants.K))

    @classmethod
    def slot(cls, name: str) -> int:
        """Position of the field ``name`` in ``params``."""
        return cls._fields.index(name)


class ContrastMemory(nn.Module):
    """CRD memory bank (Tian et al., ICLR 2020): one momentum-updated embedding per training sample and
    view; the student's bank scores the teacher embedding and vice versa.

    ``params`` (float32 buffer, laid out as Constants) is read once and cached as Python floats, so that the
    forward does not synchronise with the device.
    """

    def __init__(self, inputSize: int, outputSize: int, K: int, T: float = 0.07, momentum: float = 0.5):
        super().__init__()
        self.nLem = outputSize
        self.multinomial = AliasMethod(torch.ones(outputSize))
        self.register_buffer("params", torch.tensor([K, T, -1, -1, momentum]))
        stdv = 1.0 / math.sqrt(inputSize / 3)
        self.register_buffer("memory_v1", torch.rand(outputSize, inputSize).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(outputSize, inputSize).mul_(2 * stdv).add_(-stdv))
        self._constants: Constants | None = None
        self._transposed: dict[str, _TransposedBank] = {}  # derived from the banks, not saved
        self._scratch_buffer: torch.Tensor | None = None

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._constants = None  # re-read params (a resumed Z) at the next forward

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor,
                idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """v1/v2: (B, D) student/teacher embeddings, y: (B,) dataset indices, idx: (B, K+1) with the
        positive in column 0 (drawn uniformly when None). Returns (out_v1, out_v2), each (B, K+1, 1):
        exp(<bank row, v> / T) / Z, the scores of v1 against the teacher bank and of v2 against the student's."""
        return tuple(scores.probabilities().unsqueeze(2) for scores in self.log_scores(v1, v2, y, idx))

    def log_scores(self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor,
                   idx: torch.Tensor | None = None) -> tuple[LogScores, LogScores]:
        """forward's outputs for v1 and v2 in log space (the bank is updated the same way). CRDLoss works on
        these, so that no exp, division or subtraction passes over the B x (K+1) scores."""
        if self._constants is None:
            self._constants = Constants.read(self.params)
        c = self._constants
        batch_size = v1.size(0)
        if idx is None:
            idx = self.multinomial.draw(batch_size * (c.K + 1)).view(batch_size, -1)
            idx[:, 0] = y
        if self.scores_whole_bank(batch_size, c.K):
            scratch = self._scratch(batch_size, v1.device)

            def score(v, name, *rest):
                bank, transposed = getattr(self, name), self._transposed.setdefault(name, _TransposedBank())
                transposed.sync(bank)
                return _WholeBankScores.apply(v, bank, *rest, scratch, transposed)
        else:
            def score(v, name, *rest):
                return _gathered_scores(v, getattr(self, name), *rest)
        # exp(score / T) with T = 0.07 amplifies low-precision errors: score in float32 even under autocast.
        with torch.autocast(v1.device.type, enabled=False):
            v1, v2 = v1.float(), v2.float()
            # Every rank applies every rank's rows, so that all ranks keep the same bank.
            rows_v1, rows_v2, rows = _rows_from_all_ranks(v1, v2, y) if _world_size() > 1 else (v1, v2, y)
            new_v1 = self._updated_rows(self.memory_v1, rows_v1, rows, c.momentum)
            new_v2 = self._updated_rows(self.memory_v2, rows_v2, rows, c.momentum)
            # Each bank scores the other view's embedding with its pre-update rows, then takes its update.
            # 1 / T scales the (B, D) embedding rather than the (B, K+1) scores.
            logits_v2 = score(v2 / c.T, "memory_v1", idx, rows, new_v1)  # (B, K+1)
            logits_v1 = score(v1 / c.T, "memory_v2", idx, rows, new_v2)
            z_v1 = self._set_normalization("Z_v1", logits_v1) if c.Z_v1 < 0 else c.Z_v1
            z_v2 = self._set_normalization("Z_v2", logits_v2) if c.Z_v2 < 0 else c.Z_v2
            return LogScores(logits_v1, math.log(z_v1)), LogScores(logits_v2, math.log(z_v2))

    @torch.no_grad()
    def snapshot(self, rows: torch.Tensor) -> Callable[[], None]:
        """Save what a forward with dataset indices ``rows`` (B,) writes; the returned function puts it back.

        For a step dropped after its forward (a non-finite loss): call the returned function instead of the
        backward (which would refuse the restored bank). Saves the rows of both banks and ``params`` (the
        first forward sets Z), not whole banks. Under several processes each forward writes every rank's
        rows, so this gathers the ranks' indices (a collective: every rank calls it, at the same step).
        """
        if _world_size() > 1:
            rows = _from_all_ranks(rows)
        saved_rows = {name: getattr(self, name).index_select(0, rows) for name in ("memory_v1", "memory_v2")}
        saved_params, saved_constants = self.params.clone(), self._constants

        @torch.no_grad()
        def restore() -> None:
            for name, values in saved_rows.items():
                self._write_rows(name, rows, values)
            self.params.copy_(saved_params)
            self._constants = saved_constants

        return restore

    def _write_rows(self, name: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Rows ``rows`` of bank ``name`` set to ``values``, and of its transposed copy if that is in step (one
        out of step is rebuilt at its next use)."""
        transposed = self._transposed.get(name)
        if transposed is None:
            getattr(self, name).index_copy_(0, rows, values)
        else:
            transposed.write_rows(getattr(self, name), rows, values)

    def _scratch(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """A (B, n) buffer kept across steps for the whole-bank scores and their gradient: on a CPU a fresh
        (B, n) tensor per use costs more in page faults than the arithmetic that fills it."""
        buffer = self._scratch_buffer
        if buffer is None or buffer.shape[0] != batch_size or buffer.device != device:
            buffer = self._scratch_buffer = torch.empty(batch_size, self.nLem, device=device)
        return buffer

    def scores_whole_bank(self, batch_size: int, K: int) -> bool:
        """Score against the whole bank (one (B, n) matmul, then pick the K+1 columns) when that reads
        fewer rows than gathering the (B, K+1, D) sampled rows; gathering stays cheaper for small batches
        against a large bank. Timings: BENCHMARKS.md, "CRD memory kernels"."""
        return batch_size * (K + 1) >= self.nLem

    @torch.no_grad()
    def _set_normalization(self, name: str, logits: torch.Tensor) -> float:
        """Z = mean of exp(logits) x n_data, fixed from the first batch (averaged over the ranks when several
        processes train, so all use the same Z) and saved in params for resume."""
        slot = Constants.slot(name)
        self.params[slot] = _mean_over_ranks(logits.exp().mean()) * self.nLem
        z = self.params[slot].item()
        self._constants = self._constants._replace(**{name: z})
        side = "student" if name == "Z_v1" else "teacher"
        LOG.info(f"CRD: normalization constant {name} is set to {z:.1f} (divides the {side} embedding's "
                 f"contrast scores; set from the first batch, as in the original)")
        return z

    @staticmethod
    @torch.no_grad()
    def _updated_rows(memory: torch.Tensor, v: torch.Tensor, y: torch.Tensor, momentum: float) -> torch.Tensor:
        """(R, D) momentum update of the bank rows y towards v, re-normalised to unit length."""
        rows = memory.index_select(0, y) * momentum + v * (1 - momentum)
        return rows / rows.pow(2).sum(1, keepdim=True).pow(0.5)


def _gathered_scores(v: torch.Tensor, memory: torch.Tensor, idx: torch.Tensor, y: torch.Tensor,
                     new_rows: torch.Tensor) -> torch.Tensor:
    """(B, K+1) <memory[idx[b, k]], v[b]> from the gathered sampled rows (a copy, so the backward keeps the
    pre-update values), then rows y of the bank set to new_rows."""
    scores = torch.bmm(memory[idx], v.unsqueeze(2)).squeeze(2)  # (B, K+1, D) x (B, D, 1)
    with torch.no_grad():
        memory.index_copy_(0, y, new_rows)
    return scores


class _WholeBankScores(torch.autograd.Function):
    """(B, K+1) <memory[idx[b, k]], v[b]> from one (B, n) matmul with the whole bank, then rows y of the
    bank set to new_rows in place.

    The backward needs the bank as the forward read it. Instead of a copy of the bank per step (25 MB at
    n = 50000), the forward keeps the R old rows it overwrites and the backward adds back their change.
    ``scratch`` (B, n) holds the scores in the forward and their gradient in the backward; it may be shared
    by several instances, as each use rewrites it whole.
    """

    @staticmethod
    def forward(ctx, v, memory, idx, y, new_rows, scratch, transposed):
        """transposed: the bank's _TransposedBank, in step with it."""
        scores = torch.mm(v, transposed.transposed, out=scratch).gather(1, idx)  # (B, n) -> (B, K+1)
        old_rows = memory.index_select(0, y)
        transposed.write_rows(memory, y, new_rows)
        ctx.save_for_backward(idx, y, old_rows)
        # Not saved for backward: autograd would refuse the in-place update and the buffer's reuse.
        ctx.memory, ctx.version, ctx.scratch = memory, memory._version, scratch
        return scores

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        idx, y, old_rows = ctx.saved_tensors
        memory = ctx.memory
        if memory._version != ctx.version:
            raise RuntimeError("the CRD memory bank changed between a forward pass and its backward; run the "
                               "backward of each CRD loss before the next forward")
        dense = ctx.scratch.zero_().scatter_add_(1, idx, grad)  # (B, n)
        repeats = (y[:, None] == y[None, :]).sum(1, keepdim=True)  # (R, 1): a row y may appear several times
        change = (old_rows - memory.index_select(0, y)) / repeats  # (R, D), summed back once per distinct row
        correction = dense.index_select(1, y) @ change
        return dense @ memory + correction, None, None, None, None, None, None


class _TransposedBank:
    """A (D, n) copy of one bank for the whole-bank scores, kept in step with it: the (B, D) x (D, n) product
    runs faster on a CPU than the (n, D) bank read transposed (BENCHMARKS.md, "CRD memory kernels").
    Rebuilt when the bank changed other than through write_rows (a loaded state, a device move)."""

    def __init__(self) -> None:
        self.bank: torch.Tensor | None = None
        self.version = -1
        self.transposed: torch.Tensor | None = None  # (D, n) float32

    def follows(self, bank: torch.Tensor) -> bool:
        return self.bank is bank and self.version == bank._version

    def sync(self, bank: torch.Tensor) -> None:
        if not self.follows(bank):
            self.bank, self.version = bank, bank._version
            self.transposed = bank.t().contiguous()

    def write_rows(self, bank: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> None:
        """bank.index_copy_(0, y, rows), and the same rows into the copy while it is in step with the bank."""
        in_step = self.follows(bank)
        bank.index_copy_(0, y, rows)
        if in_step:
            self.transposed.index_copy_(1, y, rows.t())
            self.version = bank._version


def _world_size() -> int:
    distributed = torch.distributed
    return distributed.get_world_size() if distributed.is_available() and distributed.is_initialized() else 1


def _mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over the ranks (equal batch sizes: the mean of the whole step); unchanged alone."""
    if _world_size() == 1:
        return value
    value = value.detach().clone()
    torch.distributed.all_reduce(value)
    return value / _world_size()


def _from_all_ranks(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) of this rank -> (W*B, ...) of every rank, in rank order (the same B on every rank)."""
    parts = [torch.empty_like(t) for _ in range(_world_size())]
    torch.distributed.all_gather(parts, t.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def _rows_from_all_ranks(v1: torch.Tensor, v2: torch.Tensor,
                         y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, D), (B, D), (B,) of this rank -> (W*B, D), (W*B, D), (W*B,) of every rank, in rank order.

    Needs the same B on every rank (the loaders pad the shards to equal length). A padded sample can sit
    on two ranks: all its copies get the row of its first one, so the update writes the same value
    whichever copy lands last (index_copy_ with repeated indices has no fixed order on CUDA).
    """
    both = _from_all_ranks(torch.cat([v1, v2], dim=1))  # (W*B, 2D): one all_gather for both views
    y = _from_all_ranks(y)
    first = (y[:, None] == y[None, :]).int().argmax(dim=1)  # (W*B,) first position of the same index
    both = both.index_select(0, first)
    return both[:, :v1.size(1)], both[:, v1.size(1):], y
