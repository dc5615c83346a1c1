"""The one entry point the training scripts use to get loaders of `Batch` objects (CIFAR-100, ImageNet)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch

from dataset.cifar100 import (BatchLoader, get_cifar100_dataloaders, get_cifar100_dataloaders_sample,
                              ensure_cifar100, read_split)
from dataset.fast import TensorTestLoader, TensorTrainLoader, contrast_sampler
from dataset.dali import dali_loaders
from dataset.imagenet import ImageFolderLoader, imagefolder_loaders
from dataset.info import DATASETS
from helper.util import LOG

BACKENDS = ("tensor", "torchvision", "dali")  # every dataset's (DatasetInfo.backends: the ones it takes)
TrainLoader = Union[TensorTrainLoader, BatchLoader, ImageFolderLoader]
TestLoader = Union[TensorTestLoader, BatchLoader, ImageFolderLoader]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one), as DataLoader counts them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cap_workers(num_workers: int, warn: bool = True) -> int:
    """``num_workers`` capped at the available CPUs: more workers only compete for them (and DataLoader warns
    about each loader); the cap is said once, in one line."""
    cpus = available_cpus()
    if num_workers <= cpus:
        return num_workers
    if warn:
        LOG.info(f"==> --num_workers {num_workers} is more than the {cpus} CPU{'s' if cpus > 1 else ''} this "
                 f"process may use: the training loader uses {cpus} workers (the test loader {cpus // 2})")
    return cpus


def warn_if_negatives_repeat(k: int, smallest_pool: int, n_data: int) -> None:
    """One line when some samples have fewer than ``k`` negatives: they are drawn with replacement then, as
    the original does (np.random.choice(..., replace=True))."""
    if k > smallest_pool:
        LOG.warning(f"==> WARNING: --nce_k {k} is more than the {smallest_pool} negatives some samples have "
                    f"(the training set holds {n_data} images): their negatives are drawn with replacement "
                    f"and repeat, as in the original")


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
                  world_size: int = 1, dataset: str = "cifar100",
                  image_size: int | None = None) -> tuple[TrainLoader, TestLoader, int]:
    """(train_loader, test_loader, n_data), both yielding `Batch`.

    backend 'tensor': data on `device`, batched augmentation (num_workers unused); 'torchvision': the
    original PIL/DataLoader pipeline, batches on the CPU. Train batches carry dataset indices when
    `instance` or CRD (`crd_k` negatives) is asked for. The test loader uses int(batch_size / 2).
    Train loaders have len() and set_epoch(epoch); rank/world_size shard every epoch and the test set.
    ImageFolder datasets (ImageNet) read 'torchvision' (ImageFolder + PIL + workers) or 'dali' (JPEGs decoded
    by NVIDIA DALI), at `image_size` when given; CRD contrast indices are then drawn on `device`.
    """
    info = DATASETS[dataset].resized(image_size)
    if backend not in info.backends:
        raise ValueError(f"{dataset} data backend must be one of {info.backends}, got {backend!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if info.source == "imagefolder":
        num_workers = cap_workers(num_workers, warn=rank == 0)
        make = imagefolder_loaders if backend == "torchvision" else dali_loaders
        train, test, n_data = make(data_folder, info, batch_size, num_workers, device, instance=instance,
                                   contrast_k=crd_k, contrast_mode=crd_mode, contrast_percent=crd_percent, seed=seed,
                                   rank=rank, world_size=world_size)
        if train.contrast is not None and rank == 0:
            warn_if_negatives_repeat(crd_k, train.contrast.smallest_pool, n_data)
        return train, test, n_data
    _fetch_once(data_folder, rank, world_size)
    shards = dict(rank=rank, world_size=world_size)
    if backend == "torchvision":
        num_workers = cap_workers(num_workers, warn=rank == 0)
        # Pinned host batches: the copy to the GPU (Batch.to, non_blocking) then overlaps the step.
        shards["pin_memory"] = torch.device(device).type == "cuda"
        if crd_k is not None:
            train, test, n_data = get_cifar100_dataloaders_sample(
                batch_size, num_workers, k=crd_k, mode=crd_mode, percent=crd_percent, data_folder=data_folder,
                seed=seed, **shards)
            if rank == 0:
                warn_if_negatives_repeat(crd_k, train.dataset.smallest_pool, n_data)
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
    if contrast is not None and rank == 0:
        warn_if_negatives_repeat(crd_k, contrast.smallest_pool, len(train_labels))
    train = TensorTrainLoader(train_images, train_labels, batch_size, info, with_indices=instance,
                              contrast=contrast, seed=seed, **shards)
    test = TensorTestLoader(test_images, test_labels, max(1, int(batch_size / 2)), info, **shards)
    return train, test, len(train_labels)
