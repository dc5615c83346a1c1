"""Bad inputs end to end: one clear message, a non-zero exit, no traceback, and nothing written."""
import os
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

import train_student
import train_teacher
from conftest import teacher_checkpoint

REPO = Path(__file__).resolve().parents[1]
TEACHER = "resnet8x4"


class OpensAFile:
    """Unpickling this calls open(): a checkpoint that would run code when loaded without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, cifar_data):
    """Synthetic data and teacher files, good and bad, outside any --save_root the tests use."""
    root = tmp_path_factory.mktemp("inputs")
    checkpoint = teacher_checkpoint(TEACHER)
    weights = checkpoint["model"]
    files = {"data": cifar_data}

    def place(name: str, folder: str, obj) -> None:
        files[name] = root / "models" / folder / "ckpt_epoch_240.pth"
        files[name].parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, files[name])

    place("teacher", f"{TEACHER}_vanilla", checkpoint)
    teacher = files["teacher"]
    place("other_arch", "resnet8_vanilla", {"epoch": 240, "model": weights})
    place("mystery", "mystery", {"model": weights})
    # The bad files sit in the teacher's folder, so the architecture is known and only the file is at fault.
    folder = teacher.parent
    files["truncated"] = folder / "truncated.pth"
    files["truncated"].write_bytes(teacher.read_bytes()[: teacher.stat().st_size // 2])
    files["text"] = folder / "notes.pth"
    files["text"].write_text("not a checkpoint\n")
    files["tensor"] = folder / "tensor.pth"
    torch.save(torch.zeros(3), files["tensor"])
    files["no_model"] = folder / "no_model.pth"
    torch.save({"state_dict": weights}, files["no_model"])
    files["folder"] = folder / "folder.pth"
    files["folder"].mkdir()
    files["marker"] = root / "code_ran"
    files["code"] = folder / "code.pth"
    torch.save({"model": weights, "opt": OpensAFile(files["marker"])}, files["code"])
    return files


def student(inputs, save_root: Path, *extra: str, path_t=None, distill: str = "kd") -> list[str]:
    weights = ["-a", "0.9", "-b", "0"] if distill == "kd" else ["-a", "0", "-b", "1"]
    return ["--path_t", str(path_t or inputs["teacher"]), "--model_s", "resnet8", "--distill", distill, *weights,
            "--epochs", "1", "--init_epochs", "1", "--nce_k", "16", "--data_folder", str(inputs["data"]),
            "--save_root", str(save_root), "--batch_size", "64", "--num_workers", "0", "--device", "cpu", *extra]


def teacher(inputs, save_root: Path, *extra: str) -> list[str]:
    return ["--model", "resnet8", "--epochs", "1", "--data_folder", str(inputs["data"]), "--save_root",
            str(save_root), "--batch_size", "64", "--num_workers", "0", "--device", "cpu", *extra]


def outcome(main, argv, capsys) -> tuple[int, str]:
    """Exit code and stderr of ``main(argv)``: flag errors exit 2 through argparse, the rest return 1."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def assert_fails_cleanly(code: int, err: str, save_root: Path, *needles: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert err.strip() == last and last.startswith("error: ")  # one line, spelt the same way by both paths
    if code != 1:  # a flag error (argparse) ends by pointing at --help
        assert code == 2 and last.endswith(" --help")
    for needle in needles:
        assert needle in last, (needle, last)
    assert not save_root.exists(), sorted(p.name for p in save_root.rglob("*"))


FLAG_ERRORS = {
    "unknown student": (["--model_s", "resnet9"], ["resnet9"]),
    "unknown method": (["--distill", "magic"], ["magic"]),
    "zero batch size": (["--batch_size", "0"], ["--batch_size"]),
    "negative batch size": (["--batch_size", "-8"], ["--batch_size"]),
    "zero epochs": (["--epochs", "0"], ["--epochs"]),
    "negative learning rate": (["--learning_rate", "-0.1"], ["--learning_rate"]),
    "zero learning rate": (["--learning_rate", "0"], ["--learning_rate"]),
    "decay epochs with semicolons": (["--lr_decay_epochs", "150;180"], ["--lr_decay_epochs", "150;180"]),
    "decay epochs not numbers": (["--lr_decay_epochs", "late,later"], ["--lr_decay_epochs"]),
    "hint layer outside the choices": (["--hint_layer", "7"], ["--hint_layer"]),
}


@pytest.mark.parametrize("extra,needles", FLAG_ERRORS.values(), ids=FLAG_ERRORS.keys())
def test_bad_flag_fails_cleanly_and_writes_nothing(inputs, tmp_path, capsys, extra, needles):
    save_root = tmp_path / "out"
    code, err = outcome(train_student.main, student(inputs, save_root) + extra, capsys)
    assert_fails_cleanly(code, err, save_root, *needles)


@pytest.mark.parametrize("drop,needle", [("-a", "--alpha"), ("-b", "--beta")])
def test_missing_loss_weight_fails_cleanly(inputs, tmp_path, capsys, drop, needle):
    save_root = tmp_path / "out"
    argv = student(inputs, save_root, distill="hint")
    del argv[argv.index(drop):argv.index(drop) + 2]
    code, err = outcome(train_student.main, argv, capsys)
    assert_fails_cleanly(code, err, save_root, needle)


def test_teacher_folder_that_names_no_architecture_suggests_model_t(inputs, tmp_path, capsys):
    save_root = tmp_path / "out"
    code, err = outcome(train_student.main, student(inputs, save_root, path_t=inputs["mystery"]), capsys)
    assert_fails_cleanly(code, err, save_root, "--model_t", "mystery")


TEACHER_FILE_ERRORS = {
    "missing file": (lambda f: f["teacher"].with_name("absent.pth"), ["absent.pth", "does not exist"]),
    "a folder": (lambda f: f["folder"], ["folder.pth", "is not a file"]),
    "truncated": (lambda f: f["truncated"], ["truncated.pth is truncated ("]),
    "text file": (lambda f: f["text"], ["notes.pth", "not a readable PyTorch checkpoint"]),
    "bare tensor": (lambda f: f["tensor"], ["tensor.pth", "expected a checkpoint dict"]),
    "no model entry": (lambda f: f["no_model"], ["no_model.pth", "no 'model'"]),
    "another architecture": (lambda f: f["other_arch"],
                             ["does not fit architecture resnet8", "conv1.weight: checkpoint (32, 3, 3, 3) vs "
                              "model (16, 3, 3, 3)", "--model_t"]),
}


@pytest.mark.parametrize("make_path,needles", TEACHER_FILE_ERRORS.values(), ids=TEACHER_FILE_ERRORS.keys())
def test_bad_teacher_file_fails_cleanly_and_writes_nothing(inputs, tmp_path, capsys, make_path, needles):
    save_root = tmp_path / "out"
    code, err = outcome(train_student.main, student(inputs, save_root, path_t=make_path(inputs)), capsys)
    assert_fails_cleanly(code, err, save_root, *needles)


def test_unreadable_teacher_file_fails_cleanly(inputs, tmp_path, capsys, monkeypatch):
    save_root = tmp_path / "out"
    path = tmp_path / "models" / f"{TEACHER}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True)
    shutil.copy(inputs["teacher"], path)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: simulate the permission error instead
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))
        monkeypatch.setattr(torch, "load", refuse)
    code, err = outcome(train_student.main, student(inputs, save_root, path_t=path), capsys)
    assert_fails_cleanly(code, err, save_root, "cannot read checkpoint", "Permission denied")


def test_checkpoint_that_needs_code_execution_is_refused_without_running_it(inputs, tmp_path, capsys):
    save_root = tmp_path / "out"
    code, err = outcome(train_student.main, student(inputs, save_root, path_t=inputs["code"]), capsys)
    assert_fails_cleanly(code, err, save_root, "code.pth", "code execution", "weights_only=True")
    assert not inputs["marker"].exists()
    # The file is really armed: an unsafe load would have run it.
    torch.load(inputs["code"], weights_only=False)
    assert inputs["marker"].exists()
    inputs["marker"].unlink()


METHOD_ERRORS = {
    "hint layer past the student's maps": ("hint", ["--hint_layer", "4"], ["--hint_layer 4", "between 0 and 3"]),
    "fsp with unequal channels": ("fsp", [], ["fsp", "channel"]),
}


@pytest.mark.parametrize("distill,extra,needles", METHOD_ERRORS.values(), ids=METHOD_ERRORS.keys())
def test_impossible_method_setting_fails_cleanly_and_writes_nothing(inputs, tmp_path, capsys, distill, extra,
                                                                    needles):
    save_root = tmp_path / "out"
    code, err = outcome(train_student.main, student(inputs, save_root, *extra, distill=distill), capsys)
    assert_fails_cleanly(code, err, save_root, *needles)


def test_missing_dataset_fails_cleanly_when_it_cannot_be_downloaded(inputs, tmp_path, capsys, monkeypatch):
    import dataset.cifar100

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(dataset.cifar100, "download_and_extract_archive", offline)
    save_root = tmp_path / "out"
    empty = tmp_path / "no_data"
    for main, argv in ((train_student.main, student(inputs, save_root)),
                       (train_teacher.main, teacher(inputs, save_root))):
        argv[argv.index("--data_folder") + 1] = str(empty)
        code, err = outcome(main, argv, capsys)
        assert_fails_cleanly(code, err, save_root, "CIFAR-100 not found", str(empty / "cifar-100-python"),
                             "network unreachable", "synthetic set", f"python -m dataset.synthetic --out {empty}")


def test_corrupt_dataset_file_fails_cleanly(inputs, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(inputs["data"], data)
    train_file = data / "cifar-100-python" / "train"
    train_file.write_bytes(train_file.read_bytes()[:1000])
    save_root = tmp_path / "out"
    argv = teacher(inputs, save_root)
    argv[argv.index("--data_folder") + 1] = str(data)
    code, err = outcome(train_teacher.main, argv, capsys)
    assert_fails_cleanly(code, err, save_root, str(train_file), "truncated or corrupt")


def test_output_folder_that_cannot_be_created_fails_cleanly(inputs, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way\n")
    for main, argv in ((train_student.main, student(inputs, blocker)),
                       (train_teacher.main, teacher(inputs, blocker))):
        code, err = outcome(main, argv, capsys)
        assert code == 1 and "Traceback" not in err
        assert "is not writable" in err and "--save_root" in err and err.count("\n") == 1
    assert blocker.read_text() == "in the way\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the test above simulates it")
def test_read_only_output_folder_fails_cleanly(inputs, tmp_path, capsys):
    save_root = tmp_path / "out"
    save_root.mkdir()
    save_root.chmod(0o500)
    try:
        code, err = outcome(train_student.main, student(inputs, save_root), capsys)
    finally:
        save_root.chmod(0o700)
    assert code == 1 and "Traceback" not in err and "is not writable" in err
    assert list(save_root.iterdir()) == []


def test_teacher_script_rejects_an_unknown_model(inputs, tmp_path, capsys):
    save_root = tmp_path / "out"
    argv = teacher(inputs, save_root)
    argv[argv.index("--model") + 1] = "resnet9"
    code, err = outcome(train_teacher.main, argv, capsys)
    assert_fails_cleanly(code, err, save_root, "resnet9")


RESUME_ERRORS = {
    "missing state file": (lambda f, tmp: tmp / "nowhere" / "state.pth", ["cannot resume", "does not exist"]),
    "a teacher checkpoint": (lambda f, tmp: f["teacher"], ["not a student training state"]),
    "a truncated file": (lambda f, tmp: f["truncated"], ["cannot resume", "truncated.pth is truncated ("]),
}


@pytest.mark.parametrize("make_path,needles", RESUME_ERRORS.values(), ids=RESUME_ERRORS.keys())
def test_bad_resume_file_fails_cleanly_and_writes_nothing(inputs, tmp_path, capsys, make_path, needles):
    save_root = tmp_path / "out"
    argv = student(inputs, save_root, "--resume", str(make_path(inputs, tmp_path)))
    code, err = outcome(train_student.main, argv, capsys)
    assert_fails_cleanly(code, err, save_root, *needles)


def test_scripts_run_as_commands_exit_without_a_traceback(inputs, tmp_path):
    save_root = tmp_path / "out"
    refused = subprocess.run([sys.executable, "train_student.py", *student(inputs, save_root, path_t=inputs["code"])],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.count("\n") == 1 and "weights_only=True" in refused.stderr
    bad_flag = subprocess.run([sys.executable, "train_teacher.py", *teacher(inputs, save_root, "--epochs", "-1")],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad_flag.returncode == 2 and "--epochs must be positive" in bad_flag.stderr
    assert bad_flag.stderr.startswith("error: ") and bad_flag.stderr.count("\n") == 1
    assert bad_flag.stderr.endswith("; see python train_teacher.py --help\n")
    for result in (refused, bad_flag):
        assert "Traceback" not in result.stderr + result.stdout
    assert not save_root.exists() and not inputs["marker"].exists()
