"""The one entry point the training scripts use to get loaders of `Batch` objects (CIFAR-100 today)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from dataset.cifar100 import (BatchLoader, get_cifar100_dataloaders, get_cifar100_dataloaders_sample,
                              ensure_cifar100, read_split)
from dataset.fast import TensorTestLoader, TensorTrainLoader, contrast_sampler
from dataset.info import DATASETS

BACKENDS = ("tensor", "torchvision")
TrainLoader = Union[TensorTrainLoader, BatchLoader]
TestLoader = Union[TensorTestLoader, BatchLoader]


def _fetch_once(data_folder: str | Path, rank: int, world_size: int) -> None:
    """Make sure the files exist, letting only rank 0 download when a process group is running."""
    distributed = world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and rank != 0:
        torch.distributed.barrier()
    ensure_cifar100(data_folder)
    if distributed and rank == 0:
        torch.distributed.barrier()


def build_loaders(data_folder: str | Path, backend: str, batch_size: int, num_workers: int,
                  device: torch.device | str, *, instance: bool, crd_k: int | None = None,
                  crd_mode: str = "exact", crd_percent: float = 1.0, seed: int = 0, rank: int = 0,
                  world_size: int = 1, dataset: str = "cifar100") -> tuple[TrainLoader, TestLoader, int]:
    """(train_loader, test_loader, n_data), both yielding `Batch`.

    backend 'tensor': data on `device`, batched augmentation (num_workers unused); 'torchvision': the
    original PIL/DataLoader pipeline, batches on the CPU. Train batches carry dataset indices when
    `instance` or CRD (`crd_k` negatives) is asked for. The test loader uses int(batch_size / 2).
    Train loaders have len() and set_epoch(epoch); rank/world_size shard every epoch and the test set.
    """
    info = DATASETS[dataset]
    if backend not in BACKENDS:
        raise ValueError(f"data backend must be one of {BACKENDS}, got {backend!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    _fetch_once(data_folder, rank, world_size)
    shards = dict(rank=rank, world_size=world_size)
    if backend == "torchvision":
        # Pinned host batches: the copy to the GPU (Batch.to, non_blocking) then overlaps the step.
        shards["pin_memory"] = torch.device(device).type == "cuda"
        if crd_k is not None:
            train, test, n_data = get_cifar100_dataloaders_sample(
                batch_size, num_workers, k=crd_k, mode=crd_mode, percent=crd_percent, data_folder=data_folder,
                seed=seed, **shards)
        else:
            train, test, *_ = get_cifar100_dataloaders(batch_size, num_workers, is_instance=instance,
                                                       data_folder=data_folder, seed=seed, **shards)
            n_data = len(train.dataset)
        return BatchLoader(train), BatchLoader(test), n_data

    folder = ensure_cifar100(data_folder)
    train_images, train_labels = (torch.from_numpy(array).to(device) for array in read_split(folder, "train"))
    test_images, test_labels = (torch.from_numpy(array).to(device) for array in read_split(folder, "test"))
    contrast = None if crd_k is None else contrast_sampler(train_labels, crd_k, crd_mode, crd_percent, seed,
                                                           info.num_classes)
    train = TensorTrainLoader(train_images, train_labels, batch_size, info, with_indices=instance,
                              contrast=contrast, seed=seed, **shards)
    test = TensorTestLoader(test_images, test_labels, max(1, int(batch_size / 2)), info, **shards)
    return train, test, len(train_labels)
