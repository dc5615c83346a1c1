"""ImageNet (or any dataset in the ImageFolder layout) read the standard PyTorch way: torchvision's
ImageFolder, PIL decoding and DataLoader workers (the recipe of torchvision's ImageNet reference).

``--data_folder`` holds ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG``; class indices are the sorted
train folder names (val uses the same). Every epoch's order comes from (seed, epoch) on every rank
(DistributedSampler, also in one process) and the workers' random seeds likewise, so a resumed epoch
replays. CRD's contrast indices are drawn for each batch on the training device (dataset/sampling.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS

from dataset.batch import Batch
from dataset.cifar100 import DatasetError, StridedShardSampler
from dataset.fast import contrast_sampler, derived_generator
from dataset.info import DatasetInfo
from dataset.sampling import ContrastSampler

SPLITS = ("train", "val")
_WORKER_STREAM, _CONTRAST_STREAM = 10, 11  # derived_generator keys (fast.py uses 0..2 + rank)
VAL_FIX = "python scripts/imagenet_val_folders.py {folder} LOC_val_solution.csv"


class ImageReadError(DatasetError):
    """An image file PIL cannot read (the message names it)."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def check_layout(data_folder: str | Path) -> list[str]:
    """The class names (sorted train folders) of an ImageFolder-layout ``data_folder``, or a DatasetError
    saying what is missing and how to fix it."""
    root = Path(data_folder)
    layout = f"{root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG"
    if not root.is_dir():
        raise DatasetError(f"--data_folder {root} does not exist; --dataset imagenet reads {layout}")
    classes: dict[str, list[str]] = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise DatasetError(f"--data_folder {root} has no {split}/ folder; --dataset imagenet reads {layout}")
        with os.scandir(folder) as entries:
            entries = list(entries)
        loose = sum(1 for e in entries if e.is_file() and _is_image(e.name))
        if loose:
            fix = (f"sort them into class folders with: {VAL_FIX.format(folder=folder)} (Kaggle's label file, "
                   f"or any file of 'image class' lines)" if split == "val" else
                   f"extract each class archive into its own folder ({folder}/<class>/)")
            raise DatasetError(f"{folder} holds {loose} images directly instead of one folder per class "
                               f"({folder}/<class>/*.JPEG); {fix}")
        classes[split] = sorted(e.name for e in entries if e.is_dir())
        if not classes[split]:
            raise DatasetError(f"{folder} holds no class folders; --dataset imagenet reads {layout}")
    unknown = sorted(set(classes["val"]) - set(classes["train"]))
    if unknown:
        raise DatasetError(f"{root}/val has class folders that train/ lacks ({', '.join(unknown[:3])}"
                           f"{' ...' if len(unknown) > 3 else ''}); both splits need the same class folder names")
    return classes["train"]


def read_image(path: str) -> Image.Image:
    """torchvision's PIL loader, naming the file it cannot read."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ImageReadError(f"cannot read image {path} ({type(e).__name__}: {e}); delete or replace the file"
                             ) from None


class ImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder with the class list given (val indexes classes as train does); items are
    (image, target, index) when ``with_index``."""

    def __init__(self, root: str | Path, classes: list[str], transform=None, with_index: bool = False,
                 allow_missing_classes: bool = False) -> None:
        self._classes = classes
        self.with_index = with_index
        try:
            super().__init__(str(root), transform=transform, loader=read_image, allow_empty=allow_missing_classes)
        except FileNotFoundError as e:  # a class folder without any image
            raise DatasetError(f"{root}: {e}; every class folder needs at least one image") from None

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._classes, {name: i for i, name in enumerate(self._classes)}

    def __getitem__(self, index: int) -> tuple[Any, int] | tuple[Any, int, int]:
        img, target = super().__getitem__(index)
        return (img, target, index) if self.with_index else (img, target)


def _one_line(error: DatasetError) -> DatasetError:
    """A DatasetError raised in a DataLoader worker arrives with the worker's traceback in its message: keep
    its last line (the original message)."""
    last = str(error).strip().splitlines()[-1]
    return type(error)(last.split(": ", 1)[1] if last.startswith("dataset.") else last)


class ImageFolderLoader:
    """A DataLoader over an ImageFolder seen as an iterable of `Batch` (len(), set_epoch())."""

    def __init__(self, dataset: ImageFolder, batch_size: int, num_workers: int, device: torch.device, *,
                 train: bool, contrast: ContrastSampler | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False) -> None:
        self.device, self.contrast, self.seed, self.rank = torch.device(device), contrast, seed, rank
        if train:
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        else:
            sampler = StridedShardSampler(len(dataset), rank, world_size)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                 pin_memory=pin_memory)
        self.train = train
        self.epoch = 0

    @property
    def dataset(self) -> ImageFolder:
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.train:
            self.loader.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        if self.train:  # the workers' seeds (augmentation) follow (seed, epoch, rank) too
            self.loader.generator = derived_generator("cpu", self.seed, self.epoch, _WORKER_STREAM, self.rank)
        generator = (None if self.contrast is None else
                     derived_generator(self.device, self.seed, self.epoch, _CONTRAST_STREAM, self.rank))
        try:
            for items in self.loader:
                batch = Batch(*items)
                if self.contrast is not None:  # drawn where the CRD banks live
                    indices = batch.indices.to(self.device, non_blocking=True)
                    labels = batch.labels.to(self.device, non_blocking=True)
                    batch = Batch(batch.images, labels, indices, self.contrast.sample(indices, labels, generator))
                yield batch
        except DatasetError as e:
            raise _one_line(e) from None


def imagefolder_loaders(data_folder: str | Path, info: DatasetInfo, batch_size: int, num_workers: int,
                        device: torch.device | str, *, instance: bool, contrast_k: int | None = None,
                        contrast_mode: str = "exact", contrast_percent: float = 1.0, seed: int = 0, rank: int = 0,
                        world_size: int = 1) -> tuple[ImageFolderLoader, ImageFolderLoader, int]:
    """(train, test, n_data) of an ImageFolder-layout ``data_folder``; the test loader uses int(batch_size / 2)."""
    classes = train_classes(data_folder, info)
    root = Path(data_folder)
    train_set = ImageFolder(root / "train", classes, info.train_transform(), with_index=instance or bool(contrast_k))
    test_set = ImageFolder(root / "val", classes, info.test_transform(), allow_missing_classes=True)
    contrast = None
    if contrast_k is not None:
        labels = torch.tensor(train_set.targets, dtype=torch.int64, device=device)
        contrast = contrast_sampler(labels, contrast_k, contrast_mode, contrast_percent, seed, info.num_classes)
    pin = torch.device(device).type == "cuda"  # pinned host batches: the copy to the GPU overlaps the step
    shards = dict(seed=seed, rank=rank, world_size=world_size, pin_memory=pin)
    train = ImageFolderLoader(train_set, batch_size, num_workers, device, train=True, contrast=contrast, **shards)
    test = ImageFolderLoader(test_set, max(1, int(batch_size / 2)), int(num_workers / 2), device, train=False,
                             **shards)
    return train, test, len(train_set)


def train_classes(data_folder: str | Path, info: DatasetInfo) -> list[str]:
    """The checked class list, refused when the networks' heads are too small for it."""
    classes = check_layout(data_folder)
    if len(classes) > info.num_classes:
        raise DatasetError(f"{Path(data_folder) / 'train'} holds {len(classes)} class folders, more than the "
                           f"{info.num_classes} outputs of --dataset {info.name}'s networks")
    return classes
