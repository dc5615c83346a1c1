"""A tiny ImageNet-layout folder of real JPEG files with a learnable class signal (for tests and demos).

    python -m dataset.synthetic_imagenet --out ./data/imagenet-tiny [--classes 10 --train-per-class 8 --val-per-class 2]

writes <out>/train/<wnid>/*.JPEG and <out>/val/<wnid>/*.JPEG (wnid-style names n00000000, n00000001, ...):
RGB JPEGs of random sizes (not square, smaller than ImageNet's) whose colour and stripes depend on the class.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def wnid(c: int) -> str:
    return f"n{c:08d}"


def synthetic_jpeg(label: int, rng: np.random.Generator, seed: int, size: tuple[int, int]) -> Image.Image:
    """Class colour and stripes (direction, frequency) at a random phase, plus pixel noise; size (W, H)."""
    style = np.random.default_rng([seed, label])
    colour, stripe = style.uniform(50, 205, 3), style.uniform(-60, 60, 3)
    angle, frequency = style.uniform(0, np.pi), style.choice([1.0, 2.0, 3.0]) * 2 * np.pi / min(size)
    y, x = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
    wave = np.sin(frequency * (np.cos(angle) * x + np.sin(angle) * y) + rng.uniform(0, 2 * np.pi))
    pixels = colour + stripe * wave[..., None] + rng.normal(0, 15, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def write_synthetic_imagefolder(root: str | Path, classes: int = 10, train_per_class: int = 8,
                                val_per_class: int = 2, seed: int = 0, min_size: int = 40,
                                max_size: int = 72) -> Path:
    """Write root/{train,val}/<wnid>/*.JPEG; returns root."""
    root = Path(root)
    for split, per_class, stream in (("train", train_per_class, 1), ("val", val_per_class, 2)):
        rng = np.random.default_rng([seed, stream])
        for c in range(classes):
            folder = root / split / wnid(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                size = tuple(int(v) for v in rng.integers(min_size, max_size + 1, 2))
                synthetic_jpeg(c, rng, seed, size).save(folder / f"{wnid(c)}_{split}_{i:04d}.JPEG", quality=90)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="./data/imagenet-tiny", help="the --data_folder to write")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=8)
    parser.add_argument("--val-per-class", type=int, default=2)
    parser.add_argument("--min-size", type=int, default=40, help="smallest image side (pixels)")
    parser.add_argument("--max-size", type=int, default=72, help="largest image side (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write_synthetic_imagefolder(args.out, args.classes, args.train_per_class, args.val_per_class, args.seed,
                                       args.min_size, args.max_size)
    print(f"wrote {args.classes} classes x ({args.train_per_class} train + {args.val_per_class} val) JPEGs to {root}")


if __name__ == "__main__":
    main()
