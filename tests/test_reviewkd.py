"""ReviewKD through train_student.py: it trains, its ABFs resume from state.pth, and it refuses pairs it has no
layout for. (Its numerics against the authors' code: tests/reviewkd_golden.py, run by tests/test_methods2.py.)"""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import train_student
from dataset.synthetic import write_synthetic_cifar100
from distiller_zoo import DISTILLERS
from distiller_zoo.ReviewKD import PAIR_CONFIGS, ReviewKDDistiller
from models import model_dict

pytestmark = pytest.mark.usefixtures("one_thread")

TEACHER, STUDENT = "resnet56", "resnet20"  # the cheapest pair with a layout (ABFs of 114k parameters)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Tiny synthetic CIFAR-100 and a random teacher where the paper's teachers live (arch from the folder)."""
    root = tmp_path_factory.mktemp("reviewkd")
    write_synthetic_cifar100(str(root / "data"), train_per_class=2, test_per_class=1, seed=0)
    teacher = root / "save" / "models" / f"{TEACHER}_vanilla" / "ckpt_epoch_240.pth"
    teacher.parent.mkdir(parents=True)
    torch.manual_seed(0)
    model = model_dict[TEACHER](num_classes=100)
    for module in model.modules():  # BatchNorm statistics of one batch: features of a sane scale
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(32, 3, 32, 32))
    torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": torch.tensor(1.0)}, teacher)
    return root


def argv(root: Path, trial: str, epochs: int = 1, student: str = STUDENT, *extra: str) -> list[str]:
    return ["--path_t", str(root / "save" / "models" / f"{TEACHER}_vanilla" / "ckpt_epoch_240.pth"),
            "--model_s", student, "--distill", "reviewkd", "-r", "1", "-a", "0", "-b", "0.6",
            "--epochs", str(epochs), "--trial", trial, "--data_folder", str(root / "data"),
            "--save_root", str(root / "save"), "--batch_size", "64", "--num_workers", "0", "--print_freq", "100",
            "--device", "cpu", "--seed", "7", "--deterministic", *extra]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def folder(args: list[str]) -> Path:
    return Path(train_student.parse_option(args).save_folder)


@pytest.fixture(scope="module")
def one_epoch(workdir):
    """A ReviewKD run stopped after epoch 1 of what will be 2: its arguments and the files it wrote (read now:
    the resume test continues that run)."""
    args = argv(workdir, "part", epochs=1)
    assert train_student.main(args) == 0
    run = folder(args)
    results = json.loads((run / "results.json").read_text())
    return args, results, load(run / "state.pth"), load(run / f"{STUDENT}_last.pth")


def test_reviewkd_reads_student_post_activation_and_teacher_pre_activation_features():
    assert not DISTILLERS["reviewkd"].student_preact and DISTILLERS["reviewkd"].teacher_preact


def test_reviewkd_trains_its_abfs_with_the_student_and_keeps_them_out_of_its_checkpoint(one_epoch):
    args, results, state, last = one_epoch
    assert results["finished"] and results["distill"] == "reviewkd" and results["epochs_done"] == 1
    model_dict[STUDENT](num_classes=100).load_state_dict(last["model"], strict=True)  # no ABF keys in it
    abfs = state["distiller"]
    built = DISTILLERS["reviewkd"](train_student.parse_option(args), *features()).state_dict()
    assert abfs.keys() == built.keys() and all(abfs[k].shape == built[k].shape for k in abfs)
    # One optimizer: the student's parameters, then the ABFs', which got gradients (momentum buffers).
    n_student = len(list(model_dict[STUDENT]().parameters()))
    n_abf = sum(1 for key in abfs if not key.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert len(state["optimizer"]["param_groups"][0]["params"]) == n_student + n_abf
    momentum = state["optimizer"]["state"]
    assert all(momentum[i]["momentum_buffer"].abs().sum() > 0 for i in range(n_student, n_student + n_abf))
    assert abfs["abfs.3.conv1.1.num_batches_tracked"] == 4  # train-mode BatchNorm, once per batch
    assert abfs["abfs.3.conv1.1.running_mean"].abs().sum() > 0


def features() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Feature lists of the pair (shapes only)."""
    with torch.no_grad():
        x = torch.zeros(2, 3, 32, 32)
        return (model_dict[STUDENT](num_classes=100).eval()(x, is_feat=True)[0],
                model_dict[TEACHER](num_classes=100).eval()(x, is_feat=True, preact=True)[0])


def test_resumed_reviewkd_run_continues_from_the_saved_abfs(workdir, one_epoch, monkeypatch):
    args, results, state, _ = one_epoch
    args = [*args]
    assert results["epochs_done"] == 1
    started = {}  # epoch -> the distiller's state when the loop starts that epoch
    set_epoch = ReviewKDDistiller.set_epoch

    def record(self, epoch):
        started[epoch] = {key: value.clone() for key, value in self.state_dict().items()}
        set_epoch(self, epoch)

    monkeypatch.setattr(ReviewKDDistiller, "set_epoch", record)
    args[args.index("--epochs") + 1] = "2"
    assert train_student.main(args + ["--resume", "auto"]) == 0
    assert list(started) == [2] and load(folder(args) / "state.pth")["progress"]["epochs_done"] == 2
    saved = state["distiller"]  # the ABFs after epoch 1 (trained, BatchNorm statistics of 4 batches)
    assert started[2].keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(started[2][key], value), f"{key}: the resumed run did not restore the ABFs"


def test_pair_without_a_layout_exits_with_one_line_naming_it_and_the_supported_pairs(workdir, capsys):
    student = "resnet8"
    args = argv(workdir, "na", 1, student)
    capsys.readouterr()
    assert train_student.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{TEACHER} -> {student}" in err[0] and "reviewkd" in err[0]
    assert all(f"{t} -> {s}" in err[0] for t, s in PAIR_CONFIGS)
    assert not folder(args).exists()


def test_nonpositive_warmup_is_refused_naming_the_flag(workdir, capsys):
    with pytest.raises(SystemExit) as exc:
        train_student.parse_option(argv(workdir, "w0", 1, STUDENT, "--reviewkd_warmup", "0"))
    assert exc.value.code == 2 and "--reviewkd_warmup" in capsys.readouterr().err
