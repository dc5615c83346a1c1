"""Offline quick start: teacher -> KD and CRD students -> results table, in a few minutes on a CPU.

Uses real CIFAR-100 when it is under --data_folder (or can be downloaded there); otherwise writes a small
synthetic set in the same format and says so. Outputs go under --save_root (default ./save/quickstart).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SYNTHETIC_NOTE = "synthetic data: accuracies not comparable with the paper's"


def pick_data(data_folder: str, synthetic_folder: str, offline: bool, per_class: int) -> str:
    """Return the folder to train on: the real dataset if available, else a synthetic one."""
    from dataset import DatasetError, ensure_cifar100
    from dataset.synthetic import write_synthetic_cifar100

    if not offline:
        try:
            ensure_cifar100(data_folder, download=True)
            print(f"==> using real CIFAR-100 from {data_folder}")
            return data_folder
        except DatasetError as e:
            print(f"==> real CIFAR-100 not available ({str(e).splitlines()[0]})")
    if not (Path(synthetic_folder) / "cifar-100-python" / "train").exists():
        write_synthetic_cifar100(synthetic_folder, train_per_class=per_class, test_per_class=5, seed=0)
    print(f"==> using a SYNTHETIC CIFAR-100-format set in {synthetic_folder} (numbers are not comparable "
          f"to the paper's)")
    return synthetic_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_folder", default="./data")
    parser.add_argument("--save_root", default="./save/quickstart")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each student run")
    parser.add_argument("--teacher_epochs", type=int, default=4)
    parser.add_argument("--offline", action="store_true", help="do not try to download CIFAR-100")
    parser.add_argument("--synthetic_per_class", type=int, default=10,
                        help="training images per class of the synthetic fallback set")
    args = parser.parse_args(argv)

    import train_student
    import train_teacher
    from scripts.collect_results import main as collect

    data = pick_data(args.data_folder, os.path.join(args.save_root, "synthetic_data"), args.offline,
                     args.synthetic_per_class)
    # --overwrite: a second quick start trains again (with its own settings) over the first one's runs.
    common = ["--data_folder", data, "--save_root", args.save_root, "--print_freq", "50", "--seed", "0",
              "--lr_decay_epochs", str(max(args.epochs, args.teacher_epochs) + 1), "--overwrite"]
    teacher_argv = ["--model", args.teacher, "--trial", "0", "--epochs", str(args.teacher_epochs), *common]
    print(f"==> [1/4] training teacher {args.teacher} for {args.teacher_epochs} epochs")
    if train_teacher.main(teacher_argv) != 0:
        return 1
    path_t = os.path.join(train_teacher.parse_option(teacher_argv).save_folder, f"{args.teacher}_last.pth")
    print(f"==> [2/4] training the vanilla student {args.student} for {args.epochs} epochs (baseline row)")
    if train_teacher.main(["--model", args.student, "--trial", "0", "--epochs", str(args.epochs), *common]) != 0:
        return 1
    common += ["--epochs", str(args.epochs)]
    # CRD negatives come from the training set: fewer on the small synthetic set.
    nce_k = 4096 if data == args.data_folder else min(256, 50 * args.synthetic_per_class)
    students = [("kd", ["-r", "0.1", "-a", "0.9", "-b", "0"]),
                ("crd", ["-a", "0", "-b", "0.8", "--nce_k", str(nce_k)])]
    for step, (method, weights) in enumerate(students, start=3):
        print(f"==> [{step}/4] distilling {args.teacher} -> {args.student} with {method}")
        argv_s = ["--path_t", path_t, "--model_t", args.teacher, "--model_s", args.student,
                  "--distill", method, *weights, *common]
        if train_student.main(argv_s) != 0:
            return 1
    print("==> results (last-epoch top-1, as the paper reports):")
    note = None if data == args.data_folder else SYNTHETIC_NOTE
    return collect(["--save_root", args.save_root, "--skip-empty-rows", *(["--note", note] if note else [])])


if __name__ == "__main__":
    sys.exit(main())
