"""Synthetic CIFAR-100 in the real on-disk format, with a learnable class signal (for tests and demos).

    python -m dataset.synthetic --out ./data [--train-per-class 10 --test-per-class 2 --seed 0]

writes ./data/cifar-100-python/{train,test,meta}: Python 2 style pickles (protocol 2, byte strings stored
as `str`, so keys load as str with encoding='latin1' and as bytes with encoding='bytes'), 'data' uint8
N x 3072 (R, G, B planes, row-major), fine/coarse labels, filenames, batch_label; meta with the names.
"""
from __future__ import annotations

import argparse
import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from dataset.cifar100 import FOLDER_NAME, IMAGE_SHAPE, NUM_CLASSES

NUM_COARSE = 20
_RECONSTRUCT = np.zeros(1).__reduce__()[0]


class _Python2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing bytes as Python 2 `str` and numpy's array constructor under its
    historical name, byte-compatible with the files of the CIFAR-100 release."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is not _RECONSTRUCT:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
        self.memoize(obj)


def _dump(entry: dict[bytes, Any], path: Path) -> None:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(entry)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(buffer.getvalue())
    os.replace(partial, path)


def write_split(path: str | Path, images: np.ndarray, fine_labels: np.ndarray, coarse_labels: np.ndarray,
                filenames: list[str], batch_label: str) -> None:
    """One 'train'/'test' file from uint8 images (N, 3, 32, 32) and integer labels (N,)."""
    entry = {
        b"filenames": [name.encode("latin1") for name in filenames],
        b"batch_label": batch_label.encode("latin1"),
        b"fine_labels": [int(label) for label in fine_labels],
        b"coarse_labels": [int(label) for label in coarse_labels],
        b"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1),
    }
    _dump(entry, Path(path))


def write_meta(path: str | Path, fine_names: list[str], coarse_names: list[str]) -> None:
    _dump({b"fine_label_names": [name.encode("latin1") for name in fine_names],
           b"coarse_label_names": [name.encode("latin1") for name in coarse_names]}, Path(path))


def _class_styles(seed: int) -> dict[str, np.ndarray]:
    """Per class: a base colour, a stripe direction and frequency, and a stripe colour."""
    rng = np.random.default_rng([seed, 0])
    angle = rng.uniform(0, np.pi, NUM_CLASSES)
    return {
        "colour": rng.uniform(50, 205, (NUM_CLASSES, 3)),
        "direction": np.stack([np.cos(angle), np.sin(angle)], axis=1),
        "frequency": rng.choice([1.0, 2.0, 3.0, 4.0], NUM_CLASSES) * 2 * np.pi / 32,
        "stripe": rng.uniform(-45, 45, (NUM_CLASSES, 3)),
    }


def synthetic_images(labels: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """uint8 (N, 3, 32, 32): jittered class colour + class stripes at a random phase + pixel noise."""
    styles = _class_styles(seed)
    rng = np.random.default_rng([seed, stream])
    _, height, width = IMAGE_SHAPE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    images = np.empty((len(labels), *IMAGE_SHAPE), dtype=np.uint8)
    for start in range(0, len(labels), 4096):  # chunks keep the float temporaries small
        c = labels[start:start + 4096]
        direction = styles["direction"][c]
        phase = rng.uniform(0, 2 * np.pi, (len(c), 1, 1))
        wave = np.sin(styles["frequency"][c, None, None]
                      * (direction[:, 0, None, None] * x + direction[:, 1, None, None] * y) + phase)
        colour = styles["colour"][c] + rng.normal(0, 15, (len(c), 3))  # colour alone is not enough
        pixels = (colour[:, :, None, None] + styles["stripe"][c, :, None, None] * wave[:, None]
                  + rng.normal(0, 20, (len(c), *IMAGE_SHAPE)))
        images[start:start + 4096] = np.clip(np.rint(pixels), 0, 255)
    return images


def write_synthetic_cifar100(root: str | Path, train_per_class: int = 10, test_per_class: int = 2,
                             seed: int = 0) -> Path:
    """Write root/cifar-100-python/{train,test,meta} (all 100 classes, shuffled order); returns that folder."""
    folder = Path(root) / FOLDER_NAME
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class, stream, batch_label in (("train", train_per_class, 1, "training batch 1 of 1"),
                                                  ("test", test_per_class, 2, "testing batch 1 of 1")):
        labels = np.random.default_rng([seed, stream, 0]).permutation(np.repeat(np.arange(NUM_CLASSES), per_class))
        write_split(folder / split, synthetic_images(labels, seed, stream), labels, labels * NUM_COARSE // NUM_CLASSES,
                    [f"synthetic_{split}_{i:06d}.png" for i in range(len(labels))], batch_label)
    write_meta(folder / "meta", [f"class_{c:03d}" for c in range(NUM_CLASSES)],
               [f"superclass_{c:02d}" for c in range(NUM_COARSE)])
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="./data", help="data folder (the cifar-100-python folder goes inside)")
    parser.add_argument("--train-per-class", type=int, default=10)
    parser.add_argument("--test-per-class", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = write_synthetic_cifar100(args.out, args.train_per_class, args.test_per_class, args.seed)
    print(f"wrote synthetic CIFAR-100 ({args.train_per_class} train / {args.test_per_class} test images per "
          f"class) to {folder}")


if __name__ == "__main__":
    main()
