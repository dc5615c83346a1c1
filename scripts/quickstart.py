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


def pick_data(data_folder: str, synthetic_folder: str, offline: bool) -> str:
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
        write_synthetic_cifar100(synthetic_folder, train_per_class=20, test_per_class=5, seed=0)
    print(f"==> using a SYNTHETIC CIFAR-100-format set in {synthetic_folder} (numbers are not comparable "
          f"to the paper's)")
    return synthetic_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_folder", default="./data")
    parser.add_argument("--save_root", default="./save/quickstart")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--offline", action="store_true", help="do not try to download CIFAR-100")
    args = parser.parse_args(argv)

    import train_student
    import train_teacher
    from scripts.collect_results import main as collect

    data = pick_data(args.data_folder, os.path.join(args.save_root, "synthetic_data"), args.offline)
    common = ["--data_folder", data, "--save_root", args.save_root, "--epochs", str(args.epochs),
              "--print_freq", "50", "--seed", "0", "--lr_decay_epochs", str(args.epochs + 1)]
    print(f"==> [1/3] training teacher {args.teacher} for {args.epochs} epochs")
    if train_teacher.main(["--model", args.teacher, "--trial", "0", *common]) != 0:
        return 1
    teacher_opt = train_teacher.parse_option(["--model", args.teacher, "--trial", "0", *common])
    path_t = os.path.join(teacher_opt.save_folder, f"{args.teacher}_last.pth")
    students = [("kd", ["-r", "0.1", "-a", "0.9", "-b", "0"]), ("crd", ["-a", "0", "-b", "0.8", "--nce_k", "256"])]
    for step, (method, weights) in enumerate(students, start=2):
        print(f"==> [{step}/3] distilling {args.teacher} -> {args.student} with {method}")
        argv_s = ["--path_t", path_t, "--model_t", args.teacher, "--model_s", args.student,
                  "--distill", method, *weights, *common]
        if train_student.main(argv_s) != 0:
            return 1
    print("==> results (last-epoch top-1, as the paper reports):")
    return collect(["--root", os.path.join(args.save_root, "student_model"),
                    "--root", os.path.join(args.save_root, "models")])


if __name__ == "__main__":
    sys.exit(main())
