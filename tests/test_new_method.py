"""A new method is one file: a module dropped into a copy of distiller_zoo/ trains through train_student.py,
its flag is listed in --help, the epoch and the labels reach it, and no other file needs to change."""
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from dataset.synthetic import write_synthetic_cifar100
from models import model_dict

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["models", "distiller_zoo", "crd", "dataset", "helper", "cli", "train_student.py", "train_teacher.py"]

METHOD = '''
"""Throw-away: L1 between the student's and the teacher's label logits (a test method)."""
import torch

from .base import Distiller, register_distiller


@register_distiller("throwaway")
class ThrowawayDistiller(Distiller):
    """L1 distance of the label logits, logging every epoch it is told about."""

    uses_features = False

    @classmethod
    def add_arguments(cls, group):
        group.add_argument("--throwaway_log", type=str, default="", help="file that records the epochs")

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.log = opt.throwaway_log

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        with open(self.log, "a") as f:
            f.write(f"{epoch}\\n")

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch):
        rows = torch.arange(len(batch.labels))
        return (logit_s[rows, batch.labels] - logit_t[rows, batch.labels]).abs().mean()
'''


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for name in SOURCES for p in sorted((root / name).rglob("*") if (root / name).is_dir() else [root / name])
            if p.is_file() and "__pycache__" not in p.parts}


def run(copy: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train_student.py", *argv], cwd=copy, capture_output=True, text=True,
                          timeout=600)


def test_a_method_added_as_one_file_trains_and_lists_its_flag(tmp_path):
    copy = tmp_path / "project"
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, copy / name)
    (copy / "distiller_zoo" / "Throwaway.py").write_text(textwrap.dedent(METHOD))

    help_text = run(copy, "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "--distill throwaway:" in help_text.stdout and "--throwaway_log" in help_text.stdout
    methods = help_text.stdout.split("\n  --distill METHOD")[1].split("--trial")[0]  # --distill's method list
    assert any(line.split()[:1] == ["throwaway"] for line in methods.splitlines())

    write_synthetic_cifar100(tmp_path / "data", train_per_class=2, test_per_class=1, seed=0)
    teacher = tmp_path / "teachers" / "resnet8x4_vanilla" / "ckpt_epoch_240.pth"
    teacher.parent.mkdir(parents=True)
    torch.save({"epoch": 240, "model": model_dict["resnet8x4"](num_classes=100).state_dict()}, teacher)
    log = tmp_path / "epochs.txt"
    trained = run(copy, "--path_t", str(teacher), "--model_s", "resnet8", "--distill", "throwaway", "-a", "0",
                  "-b", "1", "--throwaway_log", str(log), "--epochs", "2", "--batch_size", "64",
                  "--data_folder", str(tmp_path / "data"), "--save_root", str(tmp_path / "save"),
                  "--device", "cpu", "--seed", "0", "--num_workers", "0")
    assert trained.returncode == 0, trained.stderr
    assert log.read_text().split() == ["1", "2"]  # the loop told the method each epoch, 1-based
    results = json.loads(next((tmp_path / "save" / "student_model").glob("*throwaway*/results.json")).read_text())
    assert results["finished"] and results["distill"] == "throwaway" and results["epochs_done"] == 2

    # The only difference between the copy and the project is the new file.
    added = digests(copy)
    assert added.pop("distiller_zoo/Throwaway.py")
    assert added == digests(ROOT)
