"""Sort a flat ImageNet validation folder (val/*.JPEG, as ILSVRC2012_img_val.tar extracts) into the class
folders --dataset imagenet reads (val/<wnid>/*.JPEG).

    python scripts/imagenet_val_folders.py ./data/imagenet/val LOC_val_solution.csv

The label file is Kaggle's LOC_val_solution.csv ('ImageId,PredictionString', the class the first word of
the prediction string) or any text file of 'image class' lines (comma or whitespace separated, the image
with or without its extension). Images are moved, not copied; a second run finds nothing left to move.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helper.errors import UserError  # noqa: E402


def read_labels(path: Path) -> dict[str, str]:
    """image stem -> class folder name."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UserError(f"cannot read the label file {path}: {e.strerror or e}") from None
    labels = {}
    for number, line in enumerate(lines, start=1):
        words = [w for w in re.split(r"[,\s]+", line.strip()) if w]
        if not words or (number == 1 and words[0] == "ImageId"):
            continue
        if len(words) < 2:
            raise UserError(f"{path}:{number}: expected 'image class', got {line.strip()!r}")
        labels[Path(words[0]).stem] = words[1]
    if not labels:
        raise UserError(f"{path} holds no 'image class' lines")
    return labels


def sort_into_class_folders(val: Path, labels: dict[str, str]) -> int:
    """Move every image directly in ``val`` into val/<class>/; returns how many moved."""
    if not val.is_dir():
        raise UserError(f"{val} is not a folder")
    images = sorted(p for p in val.iterdir() if p.is_file())
    unknown = [p.name for p in images if p.stem not in labels]
    if unknown:
        raise UserError(f"{len(unknown)} images of {val} are not in the label file (e.g. {unknown[0]}); nothing "
                        f"was moved")
    for image in images:
        folder = val / labels[image.stem]
        folder.mkdir(exist_ok=True)
        image.rename(folder / image.name)
    return len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("val", type=Path, help="the flat validation folder")
    parser.add_argument("labels", type=Path, help="LOC_val_solution.csv, or a file of 'image class' lines")
    args = parser.parse_args(argv)
    try:
        moved = sort_into_class_folders(args.val, read_labels(args.labels))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"moved {moved} images of {args.val} into class folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
