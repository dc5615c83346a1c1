"""The fast ImageFolder path: NVIDIA DALI reads the JPEG files and decodes them on the GPU (nvJPEG, "mixed"
decoder), then crops, flips and normalises there (--data_backend dali; an optional dependency).

Same augmentation as the torchvision path (RandomResizedCrop with its default scale and ratio, horizontal
flip with p=0.5, Normalize; validation: resize the shorter side, center crop), different decoders and
resampling, so the numbers are close but not bit-equal; a resumed epoch does not replay bit for bit. On a
machine without CUDA the same pipeline runs on the CPU (what the tests use). The file reader's labels are
the samples' dataset indices (CRD's memory rows); the class labels are looked up from them on the device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from dataset.batch import Batch
from dataset.cifar100 import DatasetError
from dataset.fast import contrast_sampler, derived_generator
from dataset.imagenet import ImageFolder, train_classes
from dataset.info import DatasetInfo
from dataset.sampling import ContrastSampler

PACKAGES = "nvidia-dali-cuda120 (CUDA 12) or nvidia-dali-cuda130 (CUDA 13)"
_SEED_STREAM, _CONTRAST_STREAM = 20, 21


def import_dali():
    """The ``nvidia.dali`` modules used here, or a one-line DatasetError saying how to install them."""
    try:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    except ImportError as e:
        raise DatasetError(f"--data_backend dali needs NVIDIA DALI, which is not installed ({e}); "
                           f"pip install {PACKAGES}, or use --data_backend torchvision") from None
    return fn, pipeline_def, types, DALIGenericIterator, LastBatchPolicy


def _seed(*key: int) -> int:
    """A 31-bit seed for DALI from integers (derived_generator's hash)."""
    return int(torch.randint(0, 2 ** 31 - 1, (1,), generator=derived_generator("cpu", *key)))


class DaliLoader:
    """One DALI pipeline over a list of files, seen as an iterable of `Batch` on its device."""

    def __init__(self, files: list[str], targets: list[int], info: DatasetInfo, batch_size: int, num_threads: int,
                 device: torch.device, *, train: bool, with_indices: bool, contrast: ContrastSampler | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        fn, pipeline_def, types, iterator, policy = import_dali()
        self.device, self.train, self.contrast, self.seed, self.rank = device, train, contrast, seed, rank
        self.with_indices = with_indices or contrast is not None
        on_gpu = device.type == "cuda"
        self.targets = torch.tensor(targets, dtype=torch.int64, device=device)
        size = info.image_shape[1]
        mean = [255 * m for m in info.mean]
        std = [255 * s for s in info.std]

        @pipeline_def
        def pipeline():
            # Each rank reads its shard; the whole list is reshuffled every epoch with one seed on every rank.
            # The labels are the file indices (DALI's default). pad_last_batch: an epoch's last partial batch does
            # not take the next epoch's first files, so every epoch reads each file once.
            reader_seed = _seed(seed, _SEED_STREAM)
            shuffle = dict(shuffle_after_epoch=True, shuffle_after_epoch_seed=reader_seed) if train else {}
            jpegs, index = fn.readers.file(files=files, shard_id=rank, num_shards=world_size, pad_last_batch=True,
                                           seed=reader_seed, name="Reader", **shuffle)
            images = fn.decoders.image(jpegs, device="mixed" if on_gpu else "cpu", output_type=types.RGB)
            if train:
                images = fn.random_resized_crop(images, size=[size, size])
                mirror = fn.random.coin_flip(probability=0.5)
            else:
                images = fn.resize(images, resize_shorter=info.test_resize or size)
                mirror = 0
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=[size, size],
                                              mean=mean, std=std, mirror=mirror)
            return images, index.gpu() if on_gpu else index  # indices on the device: no copy per step

        self.pipe = pipeline(batch_size=batch_size, num_threads=max(1, num_threads),
                             device_id=(device.index or 0) if on_gpu else None,
                             seed=_seed(seed, _SEED_STREAM, rank))
        self.pipe.build()
        # Training on several ranks fills a shard's last batch with repeated samples (as DistributedSampler
        # pads), so that every rank takes the same number of steps; else a partial last batch, as DataLoader.
        # Validation reads each image once: a rank whose shard ends early gets an empty last batch, skipped.
        fill = train and world_size > 1
        self.iterator = iterator([self.pipe], ["images", "index"], reader_name="Reader", auto_reset=True,
                                 last_batch_policy=policy.FILL if fill else policy.PARTIAL)
        self.batches = len(self.iterator)
        self.epoch = 0

    def __len__(self) -> int:
        return self.batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # DALI's reader reshuffles by itself after every epoch

    def __iter__(self) -> Iterator[Batch]:
        generator = (None if self.contrast is None else
                     derived_generator(self.device, self.seed, self.epoch, _CONTRAST_STREAM, self.rank))
        for out in self.iterator:
            images = out[0]["images"]
            if not len(images):
                continue
            indices = out[0]["index"].view(-1).to(self.device, torch.int64)
            labels = self.targets.index_select(0, indices)
            contrast_idx = None if self.contrast is None else self.contrast.sample(indices, labels, generator)
            yield Batch(images, labels, indices if self.with_indices else None, contrast_idx)


def dali_loaders(data_folder: str | Path, info: DatasetInfo, batch_size: int, num_workers: int,
                 device: torch.device | str, *, instance: bool, contrast_k: int | None = None,
                 contrast_mode: str = "exact", contrast_percent: float = 1.0, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> tuple[DaliLoader, DaliLoader, int]:
    """(train, test, n_data) of an ImageFolder-layout ``data_folder`` read by DALI (``num_workers`` CPU threads)."""
    import_dali()
    device = torch.device(device)
    classes = train_classes(data_folder, info)
    root = Path(data_folder)
    # The same file lists and class indices as the torchvision path (ImageFolder's scan).
    train_set = ImageFolder(root / "train", classes)
    test_set = ImageFolder(root / "val", classes, allow_missing_classes=True)
    contrast = None
    if contrast_k is not None:
        labels = torch.tensor(train_set.targets, dtype=torch.int64, device=device)
        contrast = contrast_sampler(labels, contrast_k, contrast_mode, contrast_percent, seed, info.num_classes)
    shards = dict(seed=seed, rank=rank, world_size=world_size)
    train = DaliLoader([path for path, _ in train_set.samples], train_set.targets, info, batch_size, num_workers,
                       device, train=True, with_indices=instance, contrast=contrast, **shards)
    # The test set is read in order in contiguous shards (DALI's sharding), each sample on one rank.
    test = DaliLoader([path for path, _ in test_set.samples], test_set.targets, info, max(1, int(batch_size / 2)),
                      num_workers, device, train=False, with_indices=False, **shards)
    return train, test, len(train_set)
