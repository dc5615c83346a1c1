"""A small-image dataset (CIFAR-100) kept on the training device as uint8; each batch is indexed, augmented
and normalised there.

Same semantics as the torchvision path (the description's RandomCrop(H, padding) + RandomHorizontalFlip +
Normalize,
fresh shuffle per epoch, last partial batch kept) without PIL or worker processes. All randomness comes
from generators derived from (seed, epoch, stream), so resuming at epoch e replays epoch e exactly.
"""
from __future__ import annotations

import functools
import math
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from dataset.batch import Batch
from dataset.info import DatasetInfo
from dataset.sampling import ContrastSampler

_SHUFFLE_STREAM, _PERCENT_STREAM, _FIRST_AUGMENT_STREAM = 0, 1, 2


def derived_generator(device: torch.device | str, *key: int) -> torch.Generator:
    """A generator on `device` whose seed is a hash of the integers in `key` (negative ones allowed)."""
    words = np.random.SeedSequence([value % 2 ** 64 for value in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(words[0]) << 32 | int(words[1]))


@functools.lru_cache(maxsize=None)
def _mean_std(device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """(1, C, 1, 1) float32 mean and std on `device`, copied there once."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))


def normalize(images: Tensor, info: DatasetInfo) -> Tensor:
    """uint8 (B, C, H, W) -> float32 normalised, the same float ops as ToTensor + Normalize."""
    mean, std = _mean_std(images.device, info.mean, info.std)
    return images.float().div_(255).sub_(mean).div_(std)


def random_crop_flip(images: Tensor, generator: torch.Generator, pad: int) -> Tensor:
    """uint8 (B, C, H, W): per-sample RandomCrop(H, padding=pad) with zero fill, then a p=0.5 horizontal flip."""
    n, channels, height, width = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p), 0 fill like RandomCrop
    top = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
    flip = torch.rand((n, 1), generator=generator, device=device) < 0.5
    rows = top + torch.arange(height, device=device)  # (B, H)
    cols = torch.arange(width, device=device)
    cols = left + torch.where(flip, cols.flip(0), cols)  # (B, W): the flip reads the crop backwards
    pixels = rows[:, :, None] * (width + 2 * pad) + cols[:, None, :]  # (B, H, W) offsets into a padded plane
    crops = padded.flatten(2).gather(2, pixels.view(n, 1, -1).expand(n, channels, -1))
    return crops.view(n, channels, height, width)


def shard(order: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's strided share of `order`, padded with its head (as DistributedSampler does) so that
    every rank gets ceil(N / world_size) samples; shards are disjoint when world_size divides N."""
    total = math.ceil(len(order) / world_size) * world_size
    if total > len(order):
        order = order.repeat(math.ceil(total / len(order)))[:total]
    return order[rank::world_size]


class TensorTrainLoader:
    """Shuffled, augmented training batches from a device-resident uint8 tensor (airbench-style)."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, info: DatasetInfo, *,
                 with_indices: bool = True, contrast: ContrastSampler | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.images = images  # (N, C, H, W) uint8
        self.info = info
        self.labels = labels  # (N,) int64, same device
        self.batch_size = batch_size
        self.with_indices = with_indices or contrast is not None
        self.contrast = contrast
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Samples per epoch on this rank."""
        return math.ceil(len(self.labels) / self.world_size)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The next iteration replays epoch `epoch`; without a call, each iteration moves on by one."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        device = self.images.device
        # Same permutation on every rank; augmentation and CRD draws differ per rank.
        permutation = torch.randperm(len(self.labels), device=device,
                                     generator=derived_generator(device, self.seed, epoch, _SHUFFLE_STREAM))
        order = shard(permutation, self.rank, self.world_size).contiguous()
        generator = derived_generator(device, self.seed, epoch, _FIRST_AUGMENT_STREAM + self.rank)
        return (self._batch(order[start:start + self.batch_size], generator)
                for start in range(0, len(order), self.batch_size))

    def _batch(self, indices: Tensor, generator: torch.Generator) -> Batch:
        labels = self.labels.index_select(0, indices)
        images = random_crop_flip(self.images.index_select(0, indices), generator, self.info.crop_padding)
        images = normalize(images, self.info)
        contrast_idx = None if self.contrast is None else self.contrast.sample(indices, labels, generator)
        return Batch(images, labels, indices if self.with_indices else None, contrast_idx)


class TensorTestLoader:
    """Un-augmented test batches in dataset order (this rank's strided share, nothing padded)."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, info: DatasetInfo, *, rank: int = 0,
                 world_size: int = 1) -> None:
        self.info = info
        self.images = images[rank::world_size]
        self.labels = labels[rank::world_size]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, len(self.labels), self.batch_size):
            end = start + self.batch_size
            yield Batch(normalize(self.images[start:end], self.info), self.labels[start:end])


def contrast_sampler(labels: Tensor, k: int, mode: str, percent: float, seed: int,
                     num_classes: int) -> ContrastSampler:
    """The CRD sampler of the tensor path, its percent subsample fixed by `seed`."""
    pool_seed = int(np.random.SeedSequence([seed, _PERCENT_STREAM]).generate_state(1)[0])
    return ContrastSampler(labels, k, mode, percent, num_classes=num_classes, seed=pool_seed)
