"""Shared test fixtures: the repo root on sys.path, the golden reference folder, tiny synthetic CIFAR-100,
random teacher checkpoints, one small batch, and the readers of the scripts' files and log lines."""
from __future__ import annotations

import argparse
import copy
import functools
import re
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = (ROOT / "../shared/reference").resolve()  # golden vectors of the original
sys.path.insert(0, str(ROOT))

from dataset.batch import Batch  # noqa: E402
from dataset.synthetic import write_synthetic_cifar100  # noqa: E402
from models import model_dict  # noqa: E402

N_TRAIN = 200  # images in the shared synthetic training set: 2 for each of the 100 classes
TEACHER_ACCURACY = 71.5  # what the random teachers' checkpoints claim (the scripts measure it again)
BATCH, N_DATA, NCE_K = 4, 32, 16  # tiny_batch: 4 images of a 32-image dataset, 16 CRD negatives each


def reference_file(name: str) -> Path:
    """Path of a golden file, skipping the test when the reference folder is absent (user clones)."""
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"golden reference {path} not available (only present in CI / dev checkouts)")
    return path


@pytest.fixture(scope="session")
def cifar_data(tmp_path_factory) -> Path:
    """A --data_folder holding a tiny synthetic CIFAR-100 in the original file format: 2 train images and
    1 test image per class. Shared by the whole session: read it, never write into it (copy it first)."""
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar100(root, train_per_class=2, test_per_class=1, seed=0)
    return root


def teacher_checkpoint(arch: str, seed: int = 0) -> dict:
    """A randomly initialised ``arch`` in the original checkpoint format; the global RNG is left alone."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_dict[arch](num_classes=100)
    return {"epoch": 240, "model": model.state_dict(), "accuracy": torch.tensor(TEACHER_ACCURACY)}


@pytest.fixture(scope="session")
def random_teacher(tmp_path_factory) -> Callable[[str], Path]:
    """arch -> its teacher_checkpoint, written once per session where the paper's teachers live
    (``.../models/<arch>_vanilla/ckpt_epoch_240.pth``: train_student.py reads the architecture from the
    folder name). Shared: read the files, never write next to them."""
    root = tmp_path_factory.mktemp("teachers")

    @functools.cache
    def path(arch: str) -> Path:
        dest = root / "models" / f"{arch}_vanilla" / "ckpt_epoch_240.pth"
        dest.parent.mkdir(parents=True)
        torch.save(teacher_checkpoint(arch), dest)
        return dest

    return path


@functools.cache
def _pristine(name: str, seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_dict[name](num_classes=100)


def fresh_model(name: str, seed: int) -> nn.Module:
    """A new copy of ``model_dict[name]`` initialised from ``seed`` (each (name, seed) is built only once)."""
    return copy.deepcopy(_pristine(name, seed))


def tiny_batch(contrast_idx: bool = True) -> Batch:
    """BATCH random images with labels, dataset indices in [0, N_DATA) and (optionally) NCE_K + 1 CRD contrast
    indices per image, the positive first. The same batch at every call."""
    generator = torch.Generator().manual_seed(2)
    indices = torch.tensor([0, 5, 17, 31])
    sample_idx = torch.randint(0, N_DATA, (BATCH, NCE_K + 1), generator=generator)
    sample_idx[:, 0] = indices
    return Batch(images=torch.randn(BATCH, 3, 32, 32, generator=generator),
                 labels=torch.randint(0, 100, (BATCH,), generator=generator), indices=indices,
                 contrast_idx=sample_idx if contrast_idx else None)


def student_options(distill: str, model_t: str, model_s: str, **overrides) -> argparse.Namespace:
    """train_student.py's options for ``distill`` between two models, read by the script's own parser (so
    every default, each method's flags included, is the script's), with -a 1 -b 1 and a tiny CRD bank
    (NCE_K negatives, N_DATA samples); ``overrides`` are set afterwards."""
    import train_student

    opt = train_student.get_args_parser().parse_args(
        ["--distill", distill, "--model_t", model_t, "--model_s", model_s, "-a", "1", "-b", "1",
         "--nce_k", str(NCE_K)])
    opt.n_data = N_DATA
    vars(opt).update(overrides)
    return opt


def load(path) -> dict:
    """A file the scripts wrote, read on the CPU the way they read files (weights only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


_EPOCH_LINE = re.compile(r"Epoch: \[(\d+)\]\[\d+/\d+\]")  # the original's per-iteration training line
_INIT_LINE = re.compile(r"Init \[(\d+)\]\[\d+/\d+\]")  # the same line in a method's init stage
_RESUMED_LINE = re.compile(r"resumed from .*init epochs done (\d+), epochs done (\d+)/")


def epochs_trained(log: str) -> list[int]:
    """The main-stage epochs a script's output shows training iterations of, in order, each once."""
    return list(dict.fromkeys(int(epoch) for epoch in _EPOCH_LINE.findall(log)))


def init_epochs_trained(log: str) -> list[int]:
    """The init-stage epochs a script's output shows training iterations of, in order, each once."""
    return list(dict.fromkeys(int(epoch) for epoch in _INIT_LINE.findall(log)))


def resumed_after(log: str) -> tuple[int, int] | None:
    """(init epochs, epochs) done by the state a run says it resumed from; None when it did not resume."""
    found = _RESUMED_LINE.findall(log)
    assert len(found) <= 1, found
    return tuple(map(int, found[0])) if found else None


# Methods that build only for the paper's (teacher, student) pairs, and the cheapest such pair.
PAPER_PAIR_ONLY = {"reviewkd": ("resnet56", "resnet20")}


def pair_for(method: str, teacher: str, student: str) -> tuple[str, str]:
    """(teacher, student) a test runs ``method`` on: the test's pair unless the method needs a paper pair."""
    return PAPER_PAIR_ONLY.get(method, (teacher, student))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: in-process and subprocess runs then compute bit-identically, and small runs stay
    fast while other test processes share the cores (busy-waiting thread pools slow down when oversubscribed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
