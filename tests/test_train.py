"""End to end: both scripts on tiny synthetic data, with real output folders and files."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import train_student
import train_teacher
from dataset.synthetic import write_synthetic_cifar100
from distiller_zoo.base import DISTILLERS
from models import model_dict

TEACHER = "resnet8x4"
STUDENT = "resnet8"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    write_synthetic_cifar100(str(root / "data"), train_per_class=2, test_per_class=1, seed=0)
    return root


def common(root: Path, *extra: str) -> list[str]:
    return ["--data_folder", str(root / "data"), "--save_root", str(root / "save"), "--batch_size", "64",
            "--num_workers", "0", "--print_freq", "1", "--save_freq", "1", "--device", "cpu", "--seed", "0", *extra]


@pytest.fixture(scope="module")
def teacher_run(workdir):
    argv = ["--model", TEACHER, "--epochs", "1", *common(workdir, "--seed", "3")]
    assert train_teacher.main(argv) == 0
    return train_teacher.parse_option(argv)


@pytest.fixture(scope="module")
def teacher_path(workdir, teacher_run):
    """The trained teacher, placed where the paper's teachers live (arch parsed from the folder)."""
    dest = workdir / "save" / "models" / f"{TEACHER}_vanilla" / "ckpt_epoch_240.pth"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(teacher_run.save_folder) / "ckpt_epoch_1.pth", dest)
    return dest


@pytest.fixture(scope="module")
def same_width_teacher(workdir):
    """A (random) resnet20 teacher in the original checkpoint format: FSP/KDSVD need equal channel counts."""
    dest = workdir / "save" / "models" / "resnet20_vanilla" / "ckpt_epoch_240.pth"
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save({"epoch": 240, "model": model_dict["resnet20"](num_classes=100).state_dict(),
                "accuracy": torch.tensor(1.0)}, dest)
    return dest


NEEDS_EQUAL_WIDTHS = {"fsp", "kdsvd"}


def student_argv(root, path_t, distill, *extra):
    weights = ["-a", "0.9", "-b", "0", "-r", "0.1"] if distill == "kd" else ["-a", "0", "-b", "1"]
    return ["--path_t", str(path_t), "--model_s", STUDENT, "--distill", distill, *weights, "--epochs", "1",
            "--init_epochs", "1", "--nce_k", "16", *common(root), *extra]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_teacher_script_writes_the_original_files(teacher_run):
    folder = Path(teacher_run.save_folder)
    assert folder.name == f"{TEACHER}_cifar100_lr_0.05_decay_0.0005_trial_0"
    ckpt = load(folder / "ckpt_epoch_1.pth")
    assert set(ckpt) == {"epoch", "model", "accuracy", "optimizer"}
    assert set(load(folder / f"{TEACHER}_best.pth")) == {"epoch", "model", "best_acc", "optimizer"}
    last = load(folder / f"{TEACHER}_last.pth")
    assert set(last) == {"opt", "model", "optimizer"} and last["opt"]["model"] == TEACHER
    model_dict[TEACHER](num_classes=100).load_state_dict(ckpt["model"], strict=True)
    results = json.loads((folder / "results.json").read_text())
    assert results["finished"] and results["epochs_done"] == 1 and results["kind"] == "teacher"
    assert 0 <= results["last_acc"] <= 100


def test_tensorboard_event_file_holds_the_expected_scalars(teacher_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(teacher_run.tb_folder)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train_acc", "train_loss", "test_acc", "test_acc_top5", "test_loss", "learning_rate",
            "loss/ce"} <= tags


@pytest.mark.parametrize("distill", sorted(DISTILLERS))
def test_every_method_trains_through_train_student(workdir, teacher_path, same_width_teacher, distill):
    teacher = same_width_teacher if distill in NEEDS_EQUAL_WIDTHS else teacher_path
    argv = student_argv(workdir, teacher, distill)
    assert train_student.main(argv) == 0
    opt = train_student.parse_option(argv)
    folder = Path(opt.save_folder)
    assert folder.name.startswith(f"S:{STUDENT}_T:{opt.model_t}_cifar100_{distill}_r:")
    results = json.loads((folder / "results.json").read_text())
    assert results["finished"] and results["teacher"] == opt.model_t and results["distill"] == distill
    assert results["teacher_acc"] is not None
    if DISTILLERS[distill].has_init_stage:
        assert results["init_epochs_done"] == 1
    ckpt = load(folder / f"{STUDENT}_last.pth")
    model_dict[STUDENT](num_classes=100).load_state_dict(ckpt["model"], strict=True)
    if results["best_acc"] > 0:  # written on strict improvement over 0, as the original
        assert set(load(folder / f"{STUDENT}_best.pth")) == {"epoch", "model", "best_acc"}


@pytest.mark.parametrize("distill", ["crd", "abound"])
def test_resumed_run_ends_with_the_same_weights(workdir, teacher_path, distill):
    extra = ["--deterministic", "--seed", "7", "--lr_decay_epochs", "1"]
    full = student_argv(workdir, teacher_path, distill, *extra, "--trial", "full")
    full[full.index("--epochs") + 1] = "2"
    assert train_student.main(full) == 0
    part = student_argv(workdir, teacher_path, distill, *extra, "--trial", "part")
    assert train_student.main(part) == 0  # stops after epoch 1 ...
    part[part.index("--epochs") + 1] = "2"
    assert train_student.main(part + ["--resume", "auto"]) == 0  # ... and continues to epoch 2
    a = load(Path(train_student.parse_option(full).save_folder) / "state.pth")
    b = load(Path(train_student.parse_option(part).save_folder) / "state.pth")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["distiller"]:
        assert torch.equal(a["distiller"][key], b["distiller"][key]), key


def test_original_data_pipeline_trains_a_crd_student(workdir, teacher_path):
    argv = student_argv(workdir, teacher_path, "crd", "--data_backend", "torchvision", "--trial", "tv")
    assert train_student.main(argv) == 0


def test_impossible_method_pair_exits_with_one_clear_line(workdir, teacher_path, capsys):
    assert train_student.main(student_argv(workdir, teacher_path, "fsp", "--trial", "na")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fsp" in err[0] and "channel" in err[0]
