"""End to end: both scripts on tiny synthetic data, with real output folders and files; the learning-rate
schedule and the accuracy they report."""
import json
import re
import shutil
from argparse import Namespace
from pathlib import Path

import pytest
import torch

import train_student
import train_teacher
from conftest import PAPER_PAIR_ONLY, epochs_trained, init_epochs_trained, load, resumed_after
from distiller_zoo.base import DISTILLERS
from helper.util import accuracy, adjust_learning_rate, learning_rate_at
from models import model_dict

TEACHER = "resnet8x4"
STUDENT = "resnet8"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cifar_data):
    root = tmp_path_factory.mktemp("e2e")
    (root / "data").symlink_to(cifar_data)  # the session's synthetic set, read-only
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
def same_width_teacher(random_teacher):
    """A (random) resnet20 teacher in the original checkpoint format: FSP/KDSVD need equal channel counts."""
    return random_teacher("resnet20")


NEEDS_EQUAL_WIDTHS = {"fsp", "kdsvd"}


def student_argv(root, path_t, distill, *extra):
    weights = ["-a", "0.9", "-b", "0", "-r", "0.1"] if distill == "kd" else ["-a", "0", "-b", "1"]
    return ["--path_t", str(path_t), "--model_s", STUDENT, "--distill", distill, *weights, "--epochs", "1",
            "--init_epochs", "1", "--nce_k", "16", *common(root), *extra]


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


def test_results_json_has_the_keys_the_readme_lists_and_the_trial_as_given(teacher_run, workdir, teacher_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sentence = readme[readme.index("and `results.json`"):]
    sentence = sentence[:sentence.index(".\n")]
    documented = set(re.findall(r"`(\w+)`", sentence)) - {"results"}
    teacher = json.loads((Path(teacher_run.save_folder) / "results.json").read_text())
    assert set(teacher) == documented
    assert teacher["trial"] == 0  # -t is a number
    argv = student_argv(workdir, teacher_path, "kd", "--trial", "007")
    assert train_student.main(argv) == 0
    student = json.loads((Path(train_student.parse_option(argv).save_folder) / "results.json").read_text())
    assert set(student) == documented and student["trial"] == "007"  # --trial is a string


def test_tensorboard_event_file_holds_the_expected_scalars(teacher_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(teacher_run.tb_folder)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train_acc", "train_loss", "test_acc", "test_acc_top5", "test_loss", "learning_rate",
            "loss/ce"} <= tags


def test_kd_run_logs_its_kl_term_times_each_epoch_once_and_a_resume_with_nothing_left_writes_no_event_file(
        workdir, teacher_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = student_argv(workdir, teacher_path, "kd", "--trial", "tb")
    assert train_student.main(argv) == 0
    log = capsys.readouterr().out
    assert "total time" not in log
    assert len(re.findall(r"^==> epoch 1/1: [\d.]+s, \d+ images/s, train loss ", log, re.M)) == 1
    tb_folder = Path(train_student.parse_option(argv).tb_folder)
    acc = EventAccumulator(str(tb_folder))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/ce", "loss/kl", "test_acc"} <= tags
    assert "loss/kd" not in tags  # KD's loss is the KL term: no always-zero curve of its own
    events = sorted(tb_folder.iterdir())
    assert train_student.main(argv + ["--resume", "auto"]) == 0  # finished: nothing to train
    assert sorted(tb_folder.iterdir()) == events


# Methods built only for the paper's pairs train end to end in their own tests (tests/test_reviewkd.py).
@pytest.mark.parametrize("distill", sorted(set(DISTILLERS) - set(PAPER_PAIR_ONLY)))
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
    best = folder / f"{STUDENT}_best.pth"
    assert best.exists() == (results["best_acc"] > 0)  # written on strict improvement over 0, as the original
    if best.exists():
        assert load(best).keys() == {"epoch", "model", "best_acc"} and load(best)["epoch"] == 1


@pytest.mark.parametrize("distill", ["crd", "abound"])
def test_resumed_run_starts_at_the_next_epoch_and_ends_with_the_same_weights(workdir, teacher_path, distill,
                                                                               capsys):
    extra = ["--deterministic", "--seed", "7", "--lr_decay_epochs", "1"]
    full = student_argv(workdir, teacher_path, distill, *extra, "--trial", "full")
    full[full.index("--epochs") + 1] = "2"
    assert train_student.main(full) == 0
    part = student_argv(workdir, teacher_path, distill, *extra, "--trial", "part")
    assert train_student.main(part) == 0  # stops after epoch 1 ...
    part[part.index("--epochs") + 1] = "2"
    capsys.readouterr()
    assert train_student.main(part + ["--resume", "auto"]) == 0  # ... and continues to epoch 2
    log = capsys.readouterr().out
    init_done = 1 if DISTILLERS[distill].has_init_stage else 0
    assert resumed_after(log) == (init_done, 1)
    assert epochs_trained(log) == [2] and init_epochs_trained(log) == []  # nothing trained twice
    a = load(Path(train_student.parse_option(full).save_folder) / "state.pth")
    b = load(Path(train_student.parse_option(part).save_folder) / "state.pth")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["distiller"]:
        assert torch.equal(a["distiller"][key], b["distiller"][key]), key


def test_original_data_pipeline_trains_a_crd_student(workdir, teacher_path, capsys):
    argv = student_argv(workdir, teacher_path, "crd", "--data_backend", "torchvision", "--trial", "tv")
    assert train_student.main(argv) == 0
    assert epochs_trained(capsys.readouterr().out) == [1]
    folder = Path(train_student.parse_option(argv).save_folder)
    results = json.loads((folder / "results.json").read_text())
    assert results["finished"] and results["opt"]["data_backend"] == "torchvision"
    # Every training image passed through CRD once, with its own dataset index: each row of both memory
    # banks was moved towards an embedding and re-normalised (the initial rows are not unit vectors).
    distiller = load(folder / "state.pth")["distiller"]
    for bank in ("crd.contrast.memory_v1", "crd.contrast.memory_v2"):
        norms = distiller[bank].norm(dim=1)
        assert len(norms) == 200
        torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("backend, mode", [("tensor", "exact"), ("tensor", "relax"), ("torchvision", "relax")])
def test_crd_with_more_negatives_than_the_data_holds_draws_them_with_replacement_as_the_original(
        workdir, teacher_path, capsys, backend, mode):
    # The original's own command line: --nce_k 16384 (the default) on a 200-image training set.
    argv = student_argv(workdir, teacher_path, "crd", "--data_backend", backend, "--mode", mode,
                        "--trial", f"k_{backend}_{mode}")
    del argv[argv.index("--nce_k"):argv.index("--nce_k") + 2]
    assert train_student.main(argv) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "--nce_k" in line]
    assert len(warnings) == 1 and "--nce_k 16384 is more than the 198 negatives" in warnings[0]
    assert "with replacement" in warnings[0] and "repeat" in warnings[0]
    assert epochs_trained(out) == [1]
    state = load(Path(train_student.parse_option(argv).save_folder) / "state.pth")
    assert state["distiller"]["crd.contrast.params"][0] == 16384  # K of the memory bank


def test_impossible_method_pair_exits_with_one_clear_line(workdir, teacher_path, capsys):
    assert train_student.main(student_argv(workdir, teacher_path, "fsp", "--trial", "na")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fsp" in err[0] and "channel" in err[0]


# The learning-rate schedule and the accuracy the scripts report


def schedule(lr: float = 0.05) -> Namespace:
    return Namespace(learning_rate=lr, lr_decay_epochs=[150, 180, 210], lr_decay_rate=0.1)


@pytest.mark.parametrize("epoch, lr", [(1, None), (150, None), (151, 0.005), (180, 0.005), (181, 0.0005),
                                       (210, 0.0005), (211, 0.00005), (240, 0.00005)])
def test_learning_rate_decays_once_the_epoch_is_strictly_past_each_decay_epoch(epoch, lr):
    expected = None if lr is None else pytest.approx(lr, rel=1e-12)
    assert learning_rate_at(epoch, schedule()) == expected


def test_adjust_learning_rate_keeps_the_optimizers_rate_until_the_first_decay():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    assert adjust_learning_rate(150, schedule(), optimizer) == 0.01  # untouched, not reset to 0.05
    assert adjust_learning_rate(151, schedule(), optimizer) == pytest.approx(0.005)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert adjust_learning_rate(240, schedule(), optimizer) == pytest.approx(0.00005)


def test_accuracy_is_the_percentage_of_targets_among_the_top_k_logits():
    logits = torch.tensor([[0.9, 0.1, 0.2, 0.3, 0.4, 0.5],   # target 0 ranked 1st
                           [0.1, 0.2, 0.3, 0.4, 0.5, 0.9],   # target 5 ranked 1st
                           [0.1, 0.2, 0.3, 0.4, 0.8, 0.9],   # target 4 ranked 2nd
                           [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])  # target 3 ranked 4th
    targets = torch.tensor([0, 5, 4, 3])
    top1, top2, top3, top5 = accuracy(logits, targets, topk=(1, 2, 3, 5))
    assert (top1.item(), top2.item(), top3.item(), top5.item()) == (50.0, 75.0, 75.0, 100.0)
    assert top1.shape == ()


def test_accuracy_with_fewer_classes_than_k_counts_every_target():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    top1, top5 = accuracy(logits, torch.tensor([2, 2]), topk=(1, 5))
    assert (top1.item(), top5.item()) == (50.0, 100.0)
