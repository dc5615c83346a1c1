"""Faults survived: kills, signals, failed or damaged checkpoint writes, full disks and non-finite losses."""
import errno
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import train_student
import train_teacher
from conftest import epochs_trained, init_epochs_trained, load, resumed_after
from distiller_zoo.base import DISTILLERS
from helper import checkpoint
from helper.checkpoint import CheckpointError, save_atomic
from cli.app import resume_command

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
TEACHER = "resnet8x4"
STUDENT = "resnet8"
# One thread everywhere: in-process and subprocess runs then compute bit-identically, and runs stay fast
# while other test processes share the cores (busy-waiting thread pools slow down badly when oversubscribed).
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}



@pytest.fixture(scope="module")
def workdir(cifar_data, random_teacher) -> SimpleNamespace:
    """Tiny synthetic CIFAR-100 (200 train images) and a random teacher in the original checkpoint format."""
    return SimpleNamespace(data=cifar_data, teacher=random_teacher(TEACHER))


def student_argv(inputs: SimpleNamespace, save_root: Path, distill: str, *extra: str) -> list[str]:
    weights = ["-a", "0.9", "-b", "0"] if distill == "kd" else ["-a", "0", "-b", "1"]
    return ["--path_t", str(inputs.teacher), "--model_s", STUDENT, "--distill", distill, *weights, "--nce_k", "16",
            "--data_folder", str(inputs.data), "--save_root", str(save_root), "--num_workers", "0",
            "--print_freq", "1", "--device", "cpu", "--deterministic", "--seed", "5", "--lr_decay_epochs", "2",
            *extra]


def teacher_argv(inputs: SimpleNamespace, save_root: Path, *extra: str) -> list[str]:
    return ["--model", STUDENT, "--data_folder", str(inputs.data), "--save_root", str(save_root),
            "--num_workers", "0", "--print_freq", "1", "--device", "cpu", "--seed", "5", *extra]


def run_folder(module, argv: list[str]) -> Path:
    return Path(module.parse_option(argv).save_folder)


def assert_same_weights(a: dict, b: dict) -> None:
    for part in ("model", "distiller"):
        assert (a[part] is None) == (b[part] is None)
        for key in a[part] or {}:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


class Script:
    """A training script running in a subprocess; stdout is read line by line as it is printed."""

    def __init__(self, name: str, argv: list[str], stderr_file: Path):
        self.stderr_file = stderr_file
        with stderr_file.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, name, *argv], cwd=REPO, stdout=subprocess.PIPE,
                                         stderr=err, text=True, env=ENV)
        self.watchdog = threading.Timer(120, self.proc.kill)  # a hung script must not hang the suite
        self.watchdog.daemon = True
        self.watchdog.start()

    def wait_for(self, prefix: str) -> None:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return
        code = self.finish()
        pytest.fail(f"the script ended (code {code}) before printing {prefix!r}:\n{self.stderr()}")

    def finish(self) -> int:
        self.proc.stdout.read()
        self.proc.stdout.close()
        code = self.proc.wait()
        self.watchdog.cancel()
        return code

    def stderr(self) -> str:
        return self.stderr_file.read_text()


def resume_line(err: str) -> list[str]:
    """The command printed after 'Resume with:', split into words."""
    lines = err.splitlines()
    at = next(i for i, line in enumerate(lines) if line.endswith("Resume with:"))
    return shlex.split(lines[at + 1])


def test_sigkill_mid_epoch_then_resume_auto_ends_with_the_uninterrupted_weights(workdir, tmp_path, capsys):
    reference = student_argv(workdir, tmp_path / "reference", "crd", "--epochs", "2", "--batch_size", "16")
    assert train_student.main(reference) == 0
    argv = student_argv(workdir, tmp_path / "killed", "crd", "--epochs", "2", "--batch_size", "16")
    script = Script("train_student.py", argv, tmp_path / "stderr.txt")
    script.wait_for("Epoch: [2][1/")
    script.proc.send_signal(signal.SIGKILL)
    assert script.finish() == -signal.SIGKILL
    folder = run_folder(train_student, argv)
    assert load(folder / "state.pth")["progress"]["epochs_done"] == 1  # the kill landed inside epoch 2
    capsys.readouterr()
    assert train_student.main(argv + ["--resume", "auto"]) == 0
    log = capsys.readouterr().out
    assert resumed_after(log) == (0, 1) and epochs_trained(log) == [2]  # epoch 1 is not trained again
    assert_same_weights(load(folder / "state.pth"), load(run_folder(train_student, reference) / "state.pth"))
    assert json.loads((folder / "results.json").read_text())["finished"]


def test_sigkill_in_the_init_stage_then_resume_auto_ends_with_the_uninterrupted_weights(workdir, tmp_path, capsys):
    extra = ("--epochs", "1", "--init_epochs", "2", "--batch_size", "16")
    reference = student_argv(workdir, tmp_path / "reference", "abound", *extra)
    assert train_student.main(reference) == 0
    argv = student_argv(workdir, tmp_path / "killed", "abound", *extra)
    script = Script("train_student.py", argv, tmp_path / "stderr.txt")
    script.wait_for("Init [2][1/")
    script.proc.send_signal(signal.SIGKILL)
    assert script.finish() == -signal.SIGKILL
    folder = run_folder(train_student, argv)
    progress = load(folder / "state.pth")["progress"]
    assert (progress["init_epochs_done"], progress["epochs_done"]) == (1, 0)
    capsys.readouterr()
    assert train_student.main(argv + ["--resume", "auto"]) == 0
    log = capsys.readouterr().out
    assert resumed_after(log) == (1, 0)
    assert init_epochs_trained(log) == [2] and epochs_trained(log) == [1]  # init epoch 1 is not redone
    assert_same_weights(load(folder / "state.pth"), load(run_folder(train_student, reference) / "state.pth"))


def test_sigint_saves_nothing_half_done_and_prints_a_resume_command_that_finishes_the_run(workdir, tmp_path):
    # The torchvision backend draws shuffles and augmentations from the global RNG saved in state.pth.
    extra = ("--epochs", "2", "--batch_size", "16", "--data_backend", "torchvision")
    reference = student_argv(workdir, tmp_path / "reference", "kd", *extra)
    assert train_student.main(reference) == 0
    argv = student_argv(workdir, tmp_path / "stopped", "kd", *extra)
    script = Script("train_student.py", argv, tmp_path / "stderr.txt")
    script.wait_for("Epoch: [2][1/")
    script.proc.send_signal(signal.SIGINT)
    code, err = script.finish(), script.stderr()
    assert code == 130 and "Traceback" not in err and "interrupted by SIGINT" in err, err
    command = resume_line(err)
    assert command == ["python", "train_student.py", *argv, "--resume", "auto"]
    folder = run_folder(train_student, argv)
    assert load(folder / "state.pth")["progress"]["epochs_done"] == 1
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=REPO, capture_output=True, text=True,
                             timeout=120, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed_after(resumed.stdout) == (0, 1) and epochs_trained(resumed.stdout) == [2]
    assert_same_weights(load(folder / "state.pth"), load(run_folder(train_student, reference) / "state.pth"))


def test_sigterm_stops_the_teacher_script_with_code_143_and_the_run_resumes(workdir, tmp_path, capsys):
    argv = teacher_argv(workdir, tmp_path / "save", "--epochs", "3", "--batch_size", "16")
    script = Script("train_teacher.py", argv, tmp_path / "stderr.txt")
    script.wait_for("Epoch: [2][0/")
    script.proc.send_signal(signal.SIGTERM)
    code, err = script.finish(), script.stderr()
    assert code == 143 and "Traceback" not in err and "interrupted by SIGTERM" in err, err
    assert resume_line(err) == ["python", "train_teacher.py", *argv, "--resume", "auto"]
    folder = run_folder(train_teacher, argv)
    assert load(folder / "state.pth")["progress"]["epochs_done"] == 1
    assert train_teacher.main(argv + ["--resume", "auto"]) == 0
    log = capsys.readouterr().out
    assert resumed_after(log) == (0, 1) and epochs_trained(log) == [2, 3]
    results = json.loads((folder / "results.json").read_text())
    assert results["finished"] and results["epochs_done"] == 3


def test_resume_without_a_seed_flag_goes_on_with_the_seed_of_the_saved_run(workdir, tmp_path, capsys):
    def argv(save_root: Path, epochs: int, *extra: str) -> list[str]:
        words = student_argv(workdir, save_root, "kd", "--batch_size", "64", "--epochs", str(epochs), *extra)
        del words[words.index("--seed"):words.index("--seed") + 2]
        return words

    assert train_student.main(argv(tmp_path / "stopped", 1)) == 0  # a seed is drawn and recorded
    folder = run_folder(train_student, argv(tmp_path / "stopped", 1))
    seed = load(folder / "state.pth")["opt"]["seed"]
    capsys.readouterr()
    assert train_student.main(argv(tmp_path / "stopped", 2, "--resume", "auto")) == 0
    assert epochs_trained(capsys.readouterr().out) == [2]
    assert train_student.main(argv(tmp_path / "reference", 2, "--seed", str(seed))) == 0
    reference = run_folder(train_student, argv(tmp_path / "reference", 2))
    assert_same_weights(load(folder / "state.pth"), load(reference / "state.pth"))


def test_float16_loss_scale_is_saved_in_the_state_and_restored_on_resume(workdir, tmp_path, monkeypatch):
    # The scaler of a GPU without bf16, over CPU bf16 autocast (CPU float16 convolutions are very slow).
    monkeypatch.setattr("helper.engine.grad_scaler", lambda device, amp: torch.amp.GradScaler("cpu") if amp else None)
    argv = teacher_argv(workdir, tmp_path, "--amp", "--batch_size", "100", "--lr_decay_epochs", "5")
    assert train_teacher.main([*argv, "--epochs", "1"]) == 0
    state_path = run_folder(train_teacher, argv) / "state.pth"
    state = load(state_path)
    assert state["scaler"]["scale"] > 0
    state["scaler"]["scale"] = 4.0  # a scale the fresh scaler (2 ** 16) would take thousands of steps to reach
    torch.save(state, state_path)
    assert train_teacher.main([*argv, "--epochs", "2", "--resume", "auto"]) == 0
    assert load(state_path)["scaler"]["scale"] <= 4.0  # resumed from the saved scale, not from 2 ** 16


def test_resume_command_replaces_an_earlier_resume_flag(monkeypatch):
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert resume_command("train_student.py", ["--resume", "old.pth", "--trial", "my run"]) == \
        "python train_student.py --trial 'my run' --resume auto"
    assert resume_command("train_teacher.py", ["--resume=auto", "-t", "1"]) == \
        "python train_teacher.py -t 1 --resume auto"
    # --overwrite would delete what the resume continues
    assert resume_command("train_teacher.py", ["--overwrite", "-t", "1"]) == \
        "python train_teacher.py -t 1 --resume auto"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resume_command("train_teacher.py", ["-t", "1"]) == \
        "torchrun --nproc_per_node 2 train_teacher.py -t 1 --resume auto"


def test_torch_save_failing_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_atomic({"x": torch.ones(3)}, path)
    real_save = torch.save

    def crash_halfway(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(RuntimeError, match="killed while writing"):
        save_atomic({"x": torch.zeros(1000)}, path)
    assert torch.equal(load(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_disk_full_while_saving_is_a_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.pth"
    save_atomic({"x": torch.ones(3)}, path)
    real_fdopen = os.fdopen

    class FullDisk(io.FileIO):
        """A file on a disk with room for 1000 more bytes."""

        def write(self, data):
            if self.tell() + len(data) > 1000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: FullDisk(fd, "w") if "w" in mode
                        else real_fdopen(fd, mode))
    # torch.save itself reports a failed write as a bare RuntimeError; the error names the real cause.
    with pytest.raises(CheckpointError, match=f"cannot write {path}: No space left on device;.*intact"):
        save_atomic({"x": torch.zeros(10_000)}, path)
    assert torch.equal(load(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pth"]


def test_replaced_file_is_kept_as_the_previous_one(tmp_path):
    path, previous = tmp_path / "state.pth", tmp_path / "state.prev.pth"
    save_atomic({"epoch": 1}, path, previous=previous)
    assert not previous.exists()
    save_atomic({"epoch": 2}, path, previous=previous)
    save_atomic({"epoch": 3}, path, previous=previous)
    assert load(path)["epoch"] == 3 and load(previous)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.prev.pth", "state.pth"]


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def no_permission(*args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


@pytest.mark.parametrize("fault", ["disk full", "read-only folder"])
def test_failed_save_during_training_exits_with_one_line_and_keeps_the_last_state(workdir, tmp_path, monkeypatch,
                                                                                  capsys, fault):
    argv = student_argv(workdir, tmp_path / "save", "kd", "--batch_size", "64")
    assert train_student.main(argv + ["--epochs", "1"]) == 0
    folder = run_folder(train_student, argv)
    before = load(folder / "state.pth")
    capsys.readouterr()
    if fault == "disk full":
        monkeypatch.setattr(torch, "save", no_space)
        needle = "No space left on device"
    elif os.geteuid() == 0:  # root writes into read-only folders: simulate what the kernel would say
        monkeypatch.setattr(tempfile, "mkstemp", no_permission)
        needle = "Permission denied"
    else:
        folder.chmod(0o500)
        needle = "not writable"
    try:
        code = train_student.main(argv + ["--epochs", "2", "--resume", "auto"])
    finally:
        folder.chmod(0o700)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1 and needle in err
    monkeypatch.undo()
    after = load(folder / "state.pth")
    assert after["progress"]["epochs_done"] == 1
    assert_same_weights(after, before)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_truncated_state_is_reported_and_the_previous_state_used(workdir, tmp_path, capsys):
    argv = student_argv(workdir, tmp_path / "save", "kd", "--batch_size", "64", "--epochs", "2")
    assert train_student.main(argv) == 0
    folder = run_folder(train_student, argv)
    finished = load(folder / "state.pth")
    state = folder / "state.pth"
    damaged = state.read_bytes()[: state.stat().st_size // 2]
    state.write_bytes(damaged)
    capsys.readouterr()
    assert train_student.main(argv + ["--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert f"WARNING: cannot resume: {state} is truncated ({len(damaged)} bytes" in out
    assert f"resuming from the previous state {folder / 'state.prev.pth'}" in out
    assert resumed_after(out) == (0, 1) and epochs_trained(out) == [2]
    redone = load(state)
    assert redone["progress"]["epochs_done"] == 2
    assert_same_weights(redone, finished)  # epoch 2 was redone from the epoch-1 state, exactly
    # The save after the fall-back kept the good state as the previous one, not the damaged file.
    assert load(folder / "state.prev.pth")["progress"]["epochs_done"] == 1
    assert (folder / "state.damaged.pth").read_bytes() == damaged


def test_truncated_state_without_a_previous_one_is_a_clear_error(workdir, tmp_path, capsys):
    argv = student_argv(workdir, tmp_path / "save", "kd", "--batch_size", "64", "--epochs", "1")
    assert train_student.main(argv) == 0
    state = run_folder(train_student, argv) / "state.pth"
    state.write_bytes(state.read_bytes()[:100])
    capsys.readouterr()
    assert train_student.main(argv + ["--resume", "auto"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{state} is truncated (100 bytes" in err


def poison_call(monkeypatch, distill: str, call: int) -> None:
    """Make the ``call``-th loss term of ``distill`` NaN (4 batches per epoch: call 6 = epoch 2, iteration 1)."""
    cls = DISTILLERS[distill]
    forward, calls = cls.forward, []

    def poisoned(self, *args):
        term = forward(self, *args)
        calls.append(1)
        return torch.full_like(term, float("nan")) if len(calls) == call else term

    monkeypatch.setattr(cls, "forward", poisoned)


def test_nonfinite_loss_stops_naming_epoch_iteration_and_term_and_keeps_the_last_good_state(
        workdir, tmp_path, monkeypatch, capsys):
    poison_call(monkeypatch, "pkt", call=6)
    argv = student_argv(workdir, tmp_path / "save", "pkt", "--batch_size", "64", "--epochs", "3")
    assert train_student.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "non-finite in train epoch 2 at iteration 1 (term: pkt)" in err and "--skip_nonfinite" in err
    folder = run_folder(train_student, argv)
    state = load(folder / "state.pth")
    assert state["progress"]["epochs_done"] == 1
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())
    assert not json.loads((folder / "results.json").read_text())["finished"]


def test_skip_nonfinite_skips_the_bad_batch_and_finishes(workdir, tmp_path, monkeypatch, capsys):
    poison_call(monkeypatch, "pkt", call=6)
    argv = student_argv(workdir, tmp_path / "save", "pkt", "--batch_size", "64", "--epochs", "2", "--skip_nonfinite")
    assert train_student.main(argv) == 0
    assert "epoch 2 iter 1: non-finite loss (pkt); batch skipped" in capsys.readouterr().out
    state = load(run_folder(train_student, argv) / "state.pth")
    assert state["progress"]["epochs_done"] == 2
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())


def test_exploding_learning_rate_stops_the_teacher_script_with_the_failing_term(workdir, tmp_path, capsys):
    argv = teacher_argv(workdir, tmp_path / "save", "--epochs", "1", "--batch_size", "64", "--learning_rate", "1e30")
    assert train_teacher.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "non-finite in train epoch 1" in err and "(term: ce)" in err
    assert not (run_folder(train_teacher, argv) / "state.pth").exists()


# Damage named precisely, files readable by others, runs never overwritten silently, Ctrl-C told truthfully


def test_damage_of_a_checkpoint_is_named_from_its_bytes(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"x": torch.ones(1000)}, path)
    good = path.read_bytes()
    at = good.index(b"\x80", good.index(b"data.pkl")) + 2  # inside the pickle (protocol 2 starts with 0x80)
    damages = {
        "empty (0 bytes)": b"",
        f"truncated ({len(good) // 2} bytes": good[: len(good) // 2],
        "not a zip archive, as torch.save writes (it starts with b'<htm')": b"<html>not found</html>",
        "corrupt (archive member": good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1:],
    }
    for damage, data in damages.items():
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as caught:
            checkpoint.load_checkpoint(path)
        assert str(caught.value).startswith(f"{path} is {damage}"), str(caught.value)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_get_the_permissions_of_the_umask_as_torch_save_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_atomic({"x": torch.ones(3)}, tmp_path / "ckpt.pth", previous=tmp_path / "ckpt.prev.pth")
        save_atomic({"x": torch.ones(3)}, tmp_path / "ckpt.pth", previous=tmp_path / "ckpt.prev.pth")
        checkpoint.write_json_atomic({"a": 1}, tmp_path / "results.json")
        torch.save({"x": torch.ones(3)}, tmp_path / "plain.pth")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["ckpt.pth", "ckpt.prev.pth", "results.json", "plain.pth"], mode)


def test_rerunning_over_an_earlier_run_is_refused_in_one_line_until_resume_or_overwrite_says_what_to_do(
        workdir, tmp_path, monkeypatch, capsys):
    argv = student_argv(workdir, tmp_path / "save", "pkt", "--batch_size", "64", "--save_freq", "1")
    poison_call(monkeypatch, "pkt", call=9)  # 4 batches per epoch: the 3-epoch run stops in epoch 3
    assert train_student.main([*argv, "--epochs", "3"]) == 1
    monkeypatch.undo()
    folder, tb_folder = run_folder(train_student, argv), Path(train_student.parse_option(argv).tb_folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    events = sorted(tb_folder.iterdir())

    def refused(again: list[str], held: str) -> None:
        capsys.readouterr()
        try:
            code = train_student.main(again)
        except SystemExit as e:  # argparse
            code = e.code
        err = capsys.readouterr().err
        assert code in (1, 2) and "Traceback" not in err and err.strip().splitlines()[-1].count("error:") == 1
        assert held in err, err
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written
        assert sorted(tb_folder.iterdir()) == events

    # The same command again, without --resume: the stopped run is kept and the way on offered.
    refused([*argv, "--epochs", "3"], f"{folder} already holds a stopped run (2 of 3 epochs done): rerun the "
                                      f"same command with --resume auto to continue it; give another --trial to "
                                      f"keep it; or add --overwrite to delete it and start again")
    refused([*argv, "--epochs", "3", "--overwrite", "--resume", "auto"], "give only one of them")
    old = os.umask(0o022)
    try:
        assert train_student.main([*argv, "--epochs", "1", "--overwrite"]) == 0
    finally:
        os.umask(old)
    out = capsys.readouterr().out
    assert resumed_after(out) is None and epochs_trained(out) == [1]  # started again
    # Nothing of the earlier run is left to be taken for this one's: its epoch-2 checkpoint, its events.
    assert not (folder / "ckpt_epoch_2.pth").exists() and not (folder / "state.prev.pth").exists()
    assert len(list(tb_folder.iterdir())) == 1 and not set(tb_folder.iterdir()) & set(events)
    results = json.loads((folder / "results.json").read_text())
    assert results["finished"] and results["epochs_done"] == 1
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o644}  # colleagues may read the run
    # Another configuration with the same --trial meets a finished run.
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    events = sorted(tb_folder.iterdir())
    refused([*argv, "--epochs", "1", "--learning_rate", "0.01"], "already holds a finished run (1 of 1 epochs done)")
    # Continuing it is what --resume auto is for.
    assert train_student.main([*argv, "--epochs", "2", "--resume", "auto"]) == 0
    assert epochs_trained(capsys.readouterr().out) == [2]


def test_sigint_in_the_first_epoch_says_there_is_nothing_to_resume_and_the_same_command_starts_again(
        workdir, tmp_path):
    argv = student_argv(workdir, tmp_path / "save", "kd", "--epochs", "1", "--batch_size", "16")
    script = Script("train_student.py", argv, tmp_path / "stderr.txt")
    script.wait_for("Epoch: [1][0/")
    script.proc.send_signal(signal.SIGINT)
    code, err = script.finish(), script.stderr()
    assert code == 130 and "Traceback" not in err, err
    assert "before the first epoch ended" in err and "nothing to resume" in err and "state.pth" not in err
    lines = err.splitlines()
    command = shlex.split(lines[lines.index(next(line for line in lines if "nothing to resume" in line)) + 1])
    assert command == ["python", "train_student.py", *argv]
    folder = run_folder(train_student, argv)
    assert not (folder / "state.pth").exists() and not (folder / "results.json").exists()
    assert train_student.main(command[2:]) == 0  # the printed command runs: no earlier run is in the way
