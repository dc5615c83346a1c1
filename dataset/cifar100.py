"""CIFAR-100 as the original RepDistiller loads it (torchvision datasets, PIL transforms, DataLoader workers).

Kept: the public functions, dataset classes and their item tuples. Fixed: `data`/`targets` instead of the
removed `train_data`/`train_labels`, no hostname-dependent paths, ragged class layouts, and the files are
read by one validating reader (`read_split`) instead of torchvision's md5 check, so any folder in the real
format loads and a bad one fails with a message naming the file.
"""
from __future__ import annotations

import codecs
import pickle
import shlex
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torchvision import datasets, transforms
from torchvision.datasets.utils import download_and_extract_archive
from torchvision.datasets.vision import VisionDataset

from dataset.batch import Batch
from dataset.info import CIFAR100 as CIFAR100_INFO
from helper.errors import UserError

CIFAR100_MEAN, CIFAR100_STD = CIFAR100_INFO.mean, CIFAR100_INFO.std
NUM_CLASSES = CIFAR100_INFO.num_classes
IMAGE_SHAPE = CIFAR100_INFO.image_shape
FOLDER_NAME = "cifar-100-python"
SPLIT_FILES = ("train", "test", "meta")
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"


class DatasetError(UserError, RuntimeError):
    """The CIFAR-100 files are missing, unreadable or malformed (the message names the file)."""


# The only globals a CIFAR pickle needs (numpy arrays, dtypes, scalars, and Python 3 bytes); resolving
# them through numpy itself keeps files written by numpy 1.x ('numpy.core') and 2.x ('numpy._core') loadable.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_SCALAR = np.int64(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _RECONSTRUCT for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _FROMBUFFER for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _SCALAR for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that refuses everything a CIFAR file does not contain (a pickle can run arbitrary code)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the pickle") from None


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise DatasetError(f"cannot read CIFAR-100 file {path}: {e.strerror or e}") from e
    except Exception as e:  # truncated/garbled pickles raise many types (EOFError, UnpicklingError, ...)
        raise DatasetError(f"CIFAR-100 file {path} is not a readable CIFAR pickle (truncated or corrupt? "
                           f"{type(e).__name__}: {e}); delete it to download a fresh copy") from e
    if not isinstance(entry, dict):
        raise DatasetError(f"CIFAR-100 file {path} holds a {type(entry).__name__}, expected a dict")
    # Files written by Python 3 with bytes keys keep them as bytes even under encoding='latin1'.
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _field(entry: dict[str, Any], key: str, path: Path) -> Any:
    if key not in entry:
        raise DatasetError(f"CIFAR-100 file {path} has no {key!r} entry (keys: {sorted(map(str, entry))})")
    return entry[key]


def read_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated images (N, 3, 32, 32) uint8 and fine labels (N,) int64 of the 'train' or 'test' file."""
    path = Path(folder) / split
    entry = _load_pickle(path)
    data = _field(entry, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != int(np.prod(IMAGE_SHAPE)) or data.shape[0] == 0:
        shape = getattr(data, "shape", None)
        raise DatasetError(f"CIFAR-100 file {path}: 'data' must be a non-empty uint8 array of shape "
                           f"(N, 3072), got {type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
    try:
        labels = np.asarray(_field(entry, "fine_labels", path), dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"CIFAR-100 file {path}: 'fine_labels' is not a list of integers ({e})") from e
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"CIFAR-100 file {path}: {labels.size} fine labels for {data.shape[0]} images")
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        raise DatasetError(f"CIFAR-100 file {path}: fine label {labels[bad][0]} is outside 0..{NUM_CLASSES - 1}")
    return data.reshape(-1, *IMAGE_SHAPE), labels


def read_class_names(folder: str | Path) -> list[str]:
    """The 100 fine class names of the 'meta' file."""
    path = Path(folder) / "meta"
    names = _field(_load_pickle(path), "fine_label_names", path)
    if not isinstance(names, (list, tuple)) or len(names) != NUM_CLASSES:
        raise DatasetError(f"CIFAR-100 file {path}: 'fine_label_names' must list {NUM_CLASSES} names")
    return [name.decode("latin1") if isinstance(name, bytes) else str(name) for name in names]


def ensure_cifar100(data_folder: str | Path, download: bool = True) -> Path:
    """The cifar-100-python folder under data_folder; the archive is fetched only when files are absent."""
    folder = Path(data_folder) / FOLDER_NAME
    missing = [name for name in SPLIT_FILES if not (folder / name).is_file()]
    if not missing:
        return folder
    how = (f"download {ARCHIVE_URL} and extract it in {Path(data_folder)} so that {folder} holds "
           f"{', '.join(SPLIT_FILES)}; or, to try the code offline, write a small synthetic set in the same "
           f"format there (its accuracies mean nothing): python -m dataset.synthetic --out "
           f"{shlex.quote(str(data_folder))}")
    if not download:
        raise DatasetError(f"CIFAR-100 not found: {folder} lacks {', '.join(missing)}; {how}")
    try:
        # torchvision verifies the archive's md5 before extracting it.
        download_and_extract_archive(ARCHIVE_URL, str(data_folder), filename=Path(ARCHIVE_URL).name,
                                     md5=ARCHIVE_MD5)
    except Exception as e:  # urllib, ssl, socket, http and tar errors all mean "could not fetch"
        raise DatasetError(f"CIFAR-100 not found: {folder} lacks {', '.join(missing)} and downloading it "
                           f"failed ({type(e).__name__}: {e}); {how}") from e
    missing = [name for name in SPLIT_FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetError(f"the downloaded archive did not provide {', '.join(missing)} in {folder}; {how}")
    return folder


class CIFAR100(datasets.CIFAR100):
    """torchvision's CIFAR-100 (item = (PIL-transformed img, target)) read through `read_split`."""

    def __init__(self, root: str | Path, train: bool = True, transform=None, target_transform=None,
                 download: bool = False) -> None:
        VisionDataset.__init__(self, str(root), transform=transform, target_transform=target_transform)
        self.train = train
        folder = ensure_cifar100(root, download)
        images, labels = read_split(folder, "train" if train else "test")
        self.data = np.ascontiguousarray(images.transpose(0, 2, 3, 1))  # (N, 32, 32, 3) for PIL
        self.targets = labels.tolist()
        self.classes = read_class_names(folder)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class CIFAR100Instance(CIFAR100):
    """CIFAR-100 whose item also carries its dataset index: (img, target, index)."""

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        img, target = super().__getitem__(index)
        return img, target, index


class CIFAR100InstanceSample(CIFAR100):
    """CIFAR-100 with CRD's per-sample contrast indices (Tian et al., ICLR 2020): (img, target, index,
    sample_idx), sample_idx = [positive, k negatives of other classes]."""

    def __init__(self, root: str | Path, train: bool = True, transform=None, target_transform=None,
                 download: bool = False, k: int = 4096, mode: str = "exact", is_sample: bool = True,
                 percent: float = 1.0) -> None:
        super().__init__(root, train=train, transform=transform, target_transform=target_transform,
                         download=download)
        if mode not in ("exact", "relax"):
            raise ValueError(f"CRD mode must be 'exact' or 'relax', got {mode!r}")
        self.k, self.mode, self.is_sample = k, mode, is_sample
        labels = np.asarray(self.targets)
        # Lists of arrays rather than the original's 2-D arrays, so unbalanced class layouts work too.
        self.cls_positive = [np.flatnonzero(labels == c) for c in range(NUM_CLASSES)]
        self.cls_negative = [np.concatenate([self.cls_positive[j] for j in range(NUM_CLASSES) if j != c])
                             for c in range(NUM_CLASSES)]
        if 0 < percent < 1:
            self.cls_negative = [np.random.permutation(negatives)[:int(len(negatives) * percent)]
                                 for negatives in self.cls_negative]
        # k above it: some samples' negatives are drawn with replacement, and repeat
        self.smallest_pool = min(len(self.cls_negative[c]) for c in range(NUM_CLASSES) if len(self.cls_positive[c]))

    def __getitem__(self, index: int) -> tuple[Any, Any, int] | tuple[Any, Any, int, np.ndarray]:
        img, target = super().__getitem__(index)
        if not self.is_sample:
            return img, target, index
        label = self.targets[index]
        if self.mode == "exact":
            pos_idx = index
        else:
            pos_idx = np.random.choice(self.cls_positive[label], 1)[0]
        negatives = self.cls_negative[label]
        replace = self.k > len(negatives)
        neg_idx = np.random.choice(negatives, self.k, replace=replace)
        sample_idx = np.hstack((np.asarray([pos_idx], dtype=np.int64), neg_idx.astype(np.int64)))
        return img, target, index, sample_idx


def train_transform() -> transforms.Compose:
    return CIFAR100_INFO.train_transform()


def eval_transform() -> transforms.Compose:
    return CIFAR100_INFO.test_transform()


class StridedShardSampler(Sampler[int]):
    """Indices rank, rank + world_size, ... in order: each sample on exactly one rank, none padded."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _train_loader(train_set: CIFAR100, batch_size: int, num_workers: int, rank: int, world_size: int,
                  seed: int, pin_memory: bool) -> DataLoader:
    if world_size == 1:
        return DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                          pin_memory=pin_memory)
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return DataLoader(train_set, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory)


def _test_loader(data_folder: str | Path, batch_size: int, num_workers: int, rank: int,
                 world_size: int, pin_memory: bool) -> DataLoader:
    test_set = CIFAR100(root=data_folder, download=True, train=False, transform=eval_transform())
    sampler = StridedShardSampler(len(test_set), rank, world_size) if world_size > 1 else None
    return DataLoader(test_set, batch_size=max(1, int(batch_size / 2)), shuffle=False, sampler=sampler,
                      num_workers=int(num_workers / 2), pin_memory=pin_memory)


def get_cifar100_dataloaders(batch_size: int = 128, num_workers: int = 8, is_instance: bool = False,
                             data_folder: str | Path = "./data", *, rank: int = 0, world_size: int = 1,
                             seed: int = 0, pin_memory: bool = False
                             ) -> tuple[DataLoader, DataLoader] | tuple[DataLoader, DataLoader, int]:
    """(train, test) loaders, plus n_data when is_instance (then train items are (img, target, index)).

    rank/world_size shard both sets (DistributedSampler seeded with `seed` for train, strided for test);
    pin_memory: batches in page-locked memory, so that the copy to a GPU overlaps the step (non_blocking).
    """
    dataset_class = CIFAR100Instance if is_instance else CIFAR100
    train_set = dataset_class(root=data_folder, download=True, train=True, transform=train_transform())
    train_loader = _train_loader(train_set, batch_size, num_workers, rank, world_size, seed, pin_memory)
    test_loader = _test_loader(data_folder, batch_size, num_workers, rank, world_size, pin_memory)
    if is_instance:
        return train_loader, test_loader, len(train_set)
    return train_loader, test_loader


def get_cifar100_dataloaders_sample(batch_size: int = 128, num_workers: int = 8, k: int = 4096,
                                    mode: str = "exact", is_sample: bool = True, percent: float = 1.0,
                                    data_folder: str | Path = "./data", *, rank: int = 0, world_size: int = 1,
                                    seed: int = 0, pin_memory: bool = False) -> tuple[DataLoader, DataLoader, int]:
    """(train, test, n_data) with CRD train items (img, target, index, sample_idx)."""
    train_set = CIFAR100InstanceSample(root=data_folder, download=True, train=True, transform=train_transform(),
                                       k=k, mode=mode, is_sample=is_sample, percent=percent)
    train_loader = _train_loader(train_set, batch_size, num_workers, rank, world_size, seed, pin_memory)
    test_loader = _test_loader(data_folder, batch_size, num_workers, rank, world_size, pin_memory)
    return train_loader, test_loader, len(train_set)


class BatchLoader:
    """A DataLoader of (img, target[, index[, sample_idx]]) tuples seen as an iterable of `Batch`."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffles a DistributedSampler; a plain loader reshuffles from the global torch RNG anyway."""
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        for items in self.loader:
            yield Batch(*items)
