"""CRD contrast indices drawn for a whole batch at once, on the device that holds the labels."""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from dataset.cifar100 import DatasetError

# Random integers come from [0, 2**62): modulo bias and key ties are below 1e-13, i.e. never observed.
_KEY_RANGE = 2 ** 62


def uniform_below(bounds: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """(R, k) independent uniform integers, row r in [0, bounds[r])."""
    draws = torch.randint(0, _KEY_RANGE, (bounds.shape[0], k), generator=generator, device=bounds.device)
    return draws % bounds[:, None]


def distinct_by_random_keys(bounds: Tensor, k: int, width: int, generator: torch.Generator) -> Tensor:
    """(R, k): row r a uniformly random k-subset of [0, bounds[r]) (needs k <= bounds[r] <= width), in no
    particular order. The positions of the k smallest of `width` i.i.d. random keys per row, keys at
    positions >= bounds[r] pushed past every real key: O(R * width) parallel work and no host sync, the
    accelerator kernel."""
    keys = torch.randint(0, _KEY_RANGE, (bounds.shape[0], width), generator=generator, device=bounds.device)
    keys.masked_fill_(torch.arange(width, device=bounds.device) >= bounds[:, None], _KEY_RANGE)
    return keys.topk(k, dim=1, largest=False, sorted=False).indices


# distinct_by_first_draws when its k + extra draws are at most this fraction of the smallest pool: O(R * k)
# work instead of the O(R * pool) of random keys over the pool.
FIRST_DRAWS_MAX_FRACTION = 0.25


def spare_draws(k: int, smallest_bound: int) -> int | None:
    """Draws beyond k for distinct_by_first_draws, or None where the bound is too small next to k for it. k + extra
    uniform draws from [0, n) repeat about (k + extra)^2 / 2n values; a margin of 12 standard deviations (+64)
    makes a row with fewer than k distinct values a chance below 1e-30."""
    extra = 64
    while k + extra <= FIRST_DRAWS_MAX_FRACTION * smallest_bound:
        mean = (k + extra) ** 2 / (2 * smallest_bound)  # expected repeats: a fixed point, approached from below
        needed = int(np.ceil(mean + 12 * np.sqrt(mean) + 64))
        if needed <= extra:
            return extra
        extra = needed
    return None


def distinct_by_first_draws(bounds: Tensor, k: int, extra: int, generator: torch.Generator) -> Tensor:
    """(R, k): row r a uniformly random k-subset of [0, bounds[r]) for k well below every bound (ImageNet's
    1.28M rows against 16384 negatives), in random order. Each row draws k + extra uniform integers and keeps
    the first k distinct values in draw order: sequential sampling without replacement, so every k-subset is
    equally likely. O(R * k) work with no host sync, where random keys over the whole pool cost O(R * pool).
    A row with fewer than k distinct values (see spare_draws) stops the run with a device-side assert."""
    m = k + extra
    draws = uniform_below(bounds, m, generator)  # (R, m)
    values, order = draws.sort(dim=1, stable=True)  # stable: equal values keep draw order, the first one first
    first = torch.ones_like(values, dtype=torch.bool)
    first[:, 1:] = values[:, 1:] != values[:, :-1]  # (R, m) in sorted order: a value's first draw
    first = first.gather(1, order.argsort(dim=1))  # back in draw order (order is a permutation per row)
    torch._assert_async(first.sum(dim=1).min() >= k, "CRD sampler: fewer distinct draws than --nce_k")
    position = torch.arange(m, device=draws.device)
    # The kept draws (the first k first draws) sort before the rest, each group in draw order.
    keep = first & (first.cumsum(dim=1) <= k)
    keys = torch.where(keep, position, position + m)
    return draws.gather(1, keys.topk(k, dim=1, largest=False, sorted=True).indices)


class ContrastSampler:
    """CRD's contrast indices (Tian et al., ICLR 2020): per anchor a positive, then k negatives of other classes.

    Same distribution as `CIFAR100InstanceSample`: the positive is the anchor itself ('exact') or a uniform
    member of its class ('relax', may be the anchor); the negatives are a uniform k-subset of the anchor's
    negative pool when k fits in it, else k uniform draws with replacement. The pool is every sample of the
    other classes, or with 0 < percent < 1 a random int(len * percent) of them, fixed at construction.
    """

    def __init__(self, labels: Tensor, k: int, mode: str = "exact", percent: float = 1.0,
                 num_classes: int | None = None, seed: int = 0) -> None:
        if mode not in ("exact", "relax"):
            raise ValueError(f"CRD mode must be 'exact' or 'relax', got {mode!r}")
        if k < 1:
            raise ValueError(f"CRD needs k >= 1 negatives, got {k}")
        self.k, self.mode = k, mode
        device = labels.device
        labels = labels.cpu()
        # Dataset indices grouped by class: class c is the block [start[c], start[c] + size[c]).
        self.order = torch.argsort(labels, stable=True).to(device)
        class_size = torch.bincount(labels, minlength=num_classes or 0)  # num_classes None: up to the largest label
        self.class_size = class_size.to(device)
        self.class_start = (torch.cumsum(class_size, 0) - class_size).to(device)
        # Full pools need no table: pool position p of class c is order position p, or p + size[c] past c's block.
        self.pools = None
        pool_size = len(labels) - class_size
        if 0 < percent < 1:
            generator = torch.Generator().manual_seed(seed)
            order = self.order.cpu()
            pools = []
            for c in range(len(class_size)):
                start, end = int(self.class_start[c]), int(self.class_start[c] + class_size[c])
                pool = torch.cat([order[:start], order[end:]])
                pools.append(pool[torch.randperm(len(pool), generator=generator)[:int(len(pool) * percent)]])
            pool_size = torch.tensor([len(pool) for pool in pools])
            self.pools = pad_sequence(pools, batch_first=True, padding_value=-1).to(device)  # (C, max pool)
        present = class_size > 0
        if (pool_size[present] == 0).any():
            raise DatasetError("CRD needs negatives, but the training set holds a single class (or, with a "
                               "percent subsample, a class whose negative pool is empty); use a dataset with "
                               "several classes")
        self.smallest_pool = int(pool_size[present].min())  # k above it: some anchors' negatives repeat
        with_replacement = k > pool_size
        self.all_distinct = not with_replacement[present].any()
        self.all_with_replacement = bool(with_replacement[present].all())
        self.width = int(pool_size.max())
        self.spare_draws = spare_draws(k, self.smallest_pool)  # None: random keys over the pool instead
        self.pool_size = pool_size.to(device)
        self.with_replacement = with_replacement.to(device)

    def sample(self, indices: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        """(B, k+1) int64 contrast indices for anchors `indices` with classes `labels`; column 0 = positive."""
        if self.mode == "exact":
            positive = indices
        else:
            start, size = self.class_start[labels], self.class_size[labels]
            positive = self.order.index_select(0, start + uniform_below(size, 1, generator)[:, 0])
        kernel = self._sample_on_cpu if labels.device.type == "cpu" else self._sample_batched
        return kernel(positive, labels, generator)

    def _sample_batched(self, positive: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        """The accelerator kernel: the whole batch in a few tensor ops, no host sync when the pools are equal."""
        size, start = self.class_size[labels], self.class_start[labels]
        pool = self.pool_size[labels]
        if self.all_with_replacement:
            positions = uniform_below(pool, self.k, generator)
        elif self.all_distinct and self.spare_draws is not None:
            positions = distinct_by_first_draws(pool, self.k, self.spare_draws, generator)
        elif self.all_distinct:
            positions = distinct_by_random_keys(pool, self.k, self.width, generator)
        else:  # unbalanced classes, only some pools smaller than k (the boolean mask syncs a GPU)
            positions = uniform_below(pool, self.k, generator)
            distinct = ~self.with_replacement[labels]
            positions[distinct] = distinct_by_random_keys(pool[distinct], self.k, self.width, generator)
        if self.pools is None:
            positions = positions + (positions >= start[:, None]) * size[:, None]  # skip the own class
            negatives = self.order.index_select(0, positions.view(-1))
        else:
            negatives = self.pools.view(-1).index_select(0, (labels[:, None] * self.width + positions).view(-1))
        return torch.cat([positive[:, None], negatives.view(positions.shape)], dim=1)

    def _sample_on_cpu(self, positive: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        """The CPU kernel, row by row: numpy's partial Fisher-Yates shuffle (O(k) draws, where the R * width
        random keys of the batched kernel cost several times more on a CPU), or k draws with replacement,
        mapped to dataset indices by one gather written straight into the output."""
        classes = labels.tolist()
        out = np.empty((len(classes), self.k + 1), dtype=np.int64)  # (B, k+1)
        out[:, 0] = positive.numpy()
        rng = np.random.default_rng(int(torch.randint(0, _KEY_RANGE, (1,), generator=generator)))
        pool_size = self.pool_size.tolist()
        for r, c in enumerate(classes):
            if pool_size[c] >= self.k:
                positions = rng.choice(pool_size[c], self.k, replace=False, shuffle=False)
            else:
                positions = rng.integers(0, pool_size[c], self.k)
            # mode="clip": the positions are in range, and "raise" would gather into a temporary first
            np.take(self._cpu_pools[c], positions, out=out[r, 1:], mode="clip")
        return torch.from_numpy(out)

    @functools.cached_property
    def _cpu_pools(self) -> list[np.ndarray]:
        """Class c's pool as a numpy view: a table row, or (full pools) the class order read from just past
        c's block, wrapping around, so that positions [0, pool) skip c itself."""
        if self.pools is not None:
            return list(self.pools.numpy())
        order = self.order.numpy()
        twice = np.concatenate([order, order])
        ends = (self.class_start + self.class_size).tolist()
        return [twice[end:end + size] for end, size in zip(ends, self.pool_size.tolist())]
