"""The CRD memory bank (Tian et al., ICLR 2020) and the alias sampler for its negatives."""
from __future__ import annotations

import logging
import math

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


class ContrastMemory(nn.Module):
    """CRD memory bank (Tian et al., ICLR 2020): one momentum-updated embedding per training sample and
    view; the student's bank scores the teacher embedding and vice versa.

    ``params`` = [K, T, Z_v1, Z_v2, momentum] (float32 buffer, Z < 0 until set from the first batch) is
    read once and cached as Python floats so the forward does not synchronise with the device.
    """

    def __init__(self, inputSize: int, outputSize: int, K: int, T: float = 0.07, momentum: float = 0.5):
        super().__init__()
        self.nLem = outputSize
        self.K = K
        self.multinomial = AliasMethod(torch.ones(outputSize))
        self.register_buffer("params", torch.tensor([K, T, -1, -1, momentum]))
        stdv = 1.0 / math.sqrt(inputSize / 3)
        self.register_buffer("memory_v1", torch.rand(outputSize, inputSize).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(outputSize, inputSize).mul_(2 * stdv).add_(-stdv))
        self._constants: list[float] | None = None

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._constants = None  # re-read params (a resumed Z) at the next forward

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor,
                idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """v1/v2: (B, D) student/teacher embeddings, y: (B,) dataset indices, idx: (B, K+1) with the
        positive in column 0 (drawn uniformly when None). Returns (out_v1, out_v2), each (B, K+1, 1)."""
        if self._constants is None:
            self._constants = self.params.tolist()
        K, T, z_v1, z_v2, momentum = self._constants
        K = int(K)
        batch_size = v1.size(0)
        if idx is None:
            idx = self.multinomial.draw(batch_size * (K + 1)).view(batch_size, -1)
            idx[:, 0] = y
        whole_bank = self.scores_whole_bank(batch_size, K)
        score = self._scores_whole_bank if whole_bank else self._scores_gathered
        # exp(score / T) with T = 0.07 amplifies low-precision errors: score in float32 even under autocast.
        with torch.autocast(v1.device.type, enabled=False):
            v1, v2 = v1.float(), v2.float()
            out_v2 = torch.exp(score(self.memory_v1, v2, idx) / T)  # (B, K+1, 1)
            out_v1 = torch.exp(score(self.memory_v2, v1, idx) / T)
            if z_v1 < 0:
                z_v1 = self._set_normalization(2, out_v1, "Z_v1")
            if z_v2 < 0:
                z_v2 = self._set_normalization(3, out_v2, "Z_v2")
            out_v1 = out_v1 / z_v1
            out_v2 = out_v2 / z_v2
            if _world_size() > 1:
                # Every rank applies every rank's rows, so that all ranks keep the same bank.
                v1, v2, y = _rows_from_all_ranks(v1, v2, y)
            # After scoring: the scores use the pre-update rows. The whole-bank matmul keeps the bank
            # itself for its backward, so then the update must build a new tensor instead of writing in place.
            self._update("memory_v1", v1, y, momentum, in_place=not whole_bank)
            self._update("memory_v2", v2, y, momentum, in_place=not whole_bank)
        return out_v1, out_v2

    def scores_whole_bank(self, batch_size: int, K: int) -> bool:
        """Score against the whole bank (one (B, n) matmul, then pick the K+1 columns) when that reads
        fewer rows than gathering the (B, K+1, D) sampled rows: 21x faster at the paper's B=64,
        K=16384, n=50000 on CPU; gathering stays cheaper for small batches against a large bank."""
        return batch_size * (K + 1) >= self.nLem

    @staticmethod
    def _scores_gathered(memory: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """<memory[idx[b, k]], v[b]> as (B, K+1, 1), gathering the sampled rows."""
        return torch.bmm(memory[idx], v.unsqueeze(2))  # (B, K+1, D) x (B, D, 1)

    @staticmethod
    def _scores_whole_bank(memory: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """<memory[idx[b, k]], v[b]> as (B, K+1, 1), scoring every row and picking the sampled ones."""
        return (v @ memory.t()).gather(1, idx).unsqueeze(2)  # (B, n) -> (B, K+1)

    @torch.no_grad()
    def _set_normalization(self, slot: int, out: torch.Tensor, name: str) -> float:
        """Z = mean score x n_data, fixed from the first batch (averaged over the ranks when several
        processes train, so all use the same Z) and saved in params for resume."""
        self.params[slot] = _mean_over_ranks(out.mean()) * self.nLem
        z = self.params[slot].item()
        self._constants[slot] = z
        LOG.info(f"normalization constant {name} is set to {z:.1f}")
        return z

    @torch.no_grad()
    def _update(self, name: str, v: torch.Tensor, y: torch.Tensor, momentum: float, in_place: bool) -> None:
        """Momentum update of the rows y of bank ``name``, re-normalised to unit length."""
        memory = getattr(self, name)
        rows = memory.index_select(0, y) * momentum + v * (1 - momentum)
        rows = rows / rows.pow(2).sum(1, keepdim=True).pow(0.5)
        if in_place:
            memory.index_copy_(0, y, rows)
        else:
            setattr(self, name, memory.index_copy(0, y, rows))


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


@torch.no_grad()
def _rows_from_all_ranks(v1: torch.Tensor, v2: torch.Tensor,
                         y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, D), (B, D), (B,) of this rank -> (W*B, D), (W*B, D), (W*B,) of every rank, in rank order.

    Needs the same B on every rank (the loaders pad the shards to equal length). A padded sample can sit
    on two ranks: all its copies get the row of its first one, so the update writes the same value
    whichever copy lands last (index_copy_ with repeated indices has no fixed order on CUDA).
    """
    world = _world_size()
    both = torch.cat([v1, v2], dim=1).contiguous()  # (B, 2D): one all_gather for both views
    parts = [torch.empty_like(both) for _ in range(world)]
    torch.distributed.all_gather(parts, both)
    indices = [torch.empty_like(y) for _ in range(world)]
    torch.distributed.all_gather(indices, y.contiguous())
    both, y = torch.cat(parts), torch.cat(indices)
    first = (y[:, None] == y[None, :]).int().argmax(dim=1)  # (W*B,) first position of the same index
    both = both.index_select(0, first)
    return both[:, :v1.size(1)], both[:, v1.size(1):], y
