"""Both scripts under torchrun: 2 CPU processes (gloo) on tiny synthetic data."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import train_student
import train_teacher
from conftest import epochs_trained, load, resumed_after
from dataset import build_loaders
from helper.distributed import DistributedError, check_global_batch
from helper.loops import validate
from models import model_dict

ROOT = Path(__file__).resolve().parents[1]
MODEL = "resnet8"


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               *args]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def root(tmp_path_factory, cifar_data):
    root = tmp_path_factory.mktemp("ddp")
    (root / "data").symlink_to(cifar_data)  # the session's synthetic set, read-only
    return root


def common(root: Path, *extra: str) -> list[str]:
    return ["--data_folder", str(root / "data"), "--save_root", str(root / "save"), "--batch_size", "16",
            "--num_workers", "0", "--save_freq", "1", "--device", "cpu", "--dist_timeout", "1", "--seed", "1",
            *extra]


@pytest.fixture(scope="module")
def teacher(root):
    argv = ["--model", MODEL, "--epochs", "1", *common(root)]
    done = torchrun("train_teacher.py", *argv)
    return SimpleNamespace(opt=train_teacher.parse_option(argv), argv=argv, stdout=done.stdout)


def student_argv(root: Path, teacher, trial: str, epochs: int) -> list[str]:
    path_t = Path(teacher.opt.save_folder) / f"{MODEL}_last.pth"
    return ["--path_t", str(path_t), "--model_t", MODEL, "--model_s", MODEL, "--distill", "crd", "-a", "0",
            "-b", "0.8", "--nce_k", "16", "--epochs", str(epochs), "--trial", trial, "--deterministic",
            "--lr_decay_epochs", "1", "--data_backend", "torchvision", *common(root)]


@pytest.fixture(scope="module")
def crd_ranks(root, teacher):
    """A 2-epoch CRD run whose ranks each save their final state (tests/rank_states.py)."""
    out = root / "ranks"
    out.mkdir()
    torchrun("tests/rank_states.py", "student", str(out), *student_argv(root, teacher, "full", epochs=2))
    return [load(out / f"rank{rank}.pth") for rank in range(2)]


def test_two_process_teacher_run_prints_and_writes_from_rank_zero_only(teacher):
    folder = Path(teacher.opt.save_folder)
    results = json.loads((folder / "results.json").read_text())
    assert results["finished"] and results["opt"]["world_size"] == 2
    assert teacher.stdout.count(" * Acc@1") == 1  # one validation, printed by rank 0 alone
    assert {"ckpt_epoch_1.pth", f"{MODEL}_last.pth", "state.pth"} <= {p.name for p in folder.iterdir()}
    assert len(list(Path(teacher.opt.tb_folder).glob("events.out.tfevents.*"))) == 1


def test_distributed_validation_equals_single_process_validation_of_the_checkpoint(root, teacher):
    results = json.loads((Path(teacher.opt.save_folder) / "results.json").read_text())
    model = model_dict[MODEL](num_classes=100)
    model.load_state_dict(load(Path(teacher.opt.save_folder) / f"{MODEL}_last.pth")["model"], strict=True)
    test_loader = build_loaders(root / "data", "tensor", 16, 0, "cpu", instance=False)[1]
    top1, top5, _ = validate(test_loader, model, torch.device("cpu"), SimpleNamespace(), verbose=False)
    assert (top1, top5) == pytest.approx((results["last_acc"], results["last_acc_top5"]), abs=1e-9)


def test_two_process_state_resumes_in_a_single_process(root, teacher, capsys):
    state = Path(teacher.opt.save_folder) / "state.pth"
    argv = [*teacher.argv, "--epochs", "2", "--resume", str(state), "--save_root", str(root / "single")]
    assert train_teacher.main(argv) == 0
    log = capsys.readouterr().out
    assert resumed_after(log) == (0, 1) and epochs_trained(log) == [2]
    results = json.loads((Path(train_teacher.parse_option(argv).save_folder) / "results.json").read_text())
    assert results["finished"] and results["epochs_done"] == 2 and results["opt"]["world_size"] == 1


def test_crd_ranks_end_with_the_same_weights_and_memory_bank(crd_ranks):
    rank0, rank1 = crd_ranks
    for part in ("model", "distiller"):
        assert rank0[part].keys() == rank1[part].keys()
        for key in rank0[part]:
            assert torch.equal(rank0[part][key], rank1[part][key]), f"{part}.{key} differs between ranks"
    assert (rank0["distiller"]["crd.contrast.params"][2:4] > 0).all()  # Z set, the same on both ranks
    for view in ("memory_v1", "memory_v2"):
        # Updated rows are unit vectors: each rank applied the other rank's samples too.
        norms = rank0["distiller"][f"crd.contrast.{view}"].norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))


def test_resumed_two_process_run_ends_with_the_same_weights(root, teacher, crd_ranks):
    torchrun("train_student.py", *student_argv(root, teacher, "part", epochs=1))
    argv = [*student_argv(root, teacher, "part", epochs=2), "--resume", "auto"]
    log = torchrun("train_student.py", *argv).stdout
    assert resumed_after(log) == (0, 1) and epochs_trained(log) == [2]
    resumed = load(Path(train_student.parse_option(argv).save_folder) / "state.pth")
    assert resumed["progress"]["epochs_done"] == 2
    for part in ("model", "distiller"):
        for key, value in crd_ranks[0][part].items():
            assert torch.equal(resumed[part][key], value), f"{part}.{key}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_process_group_that_never_forms_times_out_with_one_clear_line(root):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    argv = ["--model", MODEL, "--epochs", "1", "--trial", "9", *common(root, "--dist_timeout", "0.05")]
    done = subprocess.run([sys.executable, "train_teacher.py", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "rank 0 of 2" in lines[0] and "--dist_timeout" in lines[0], done.stderr


DYING_RANK = """
import os, sys
from types import SimpleNamespace
import torch
sys.path.insert(0, sys.argv[1])
from helper import distributed
opt = SimpleNamespace(device="cpu", dist_timeout=1.0, seed=0)
distributed.init_distributed(opt)
if opt.rank == 1:
    os._exit(3)
for _ in range(1000):
    distributed.sum_across_ranks(torch.ones(1))
"""


def test_a_rank_that_dies_stops_the_others_instead_of_hanging(tmp_path):
    script = tmp_path / "dying_rank.py"
    script.write_text(DYING_RANK)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(ROOT)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert re.search(r"exitcode\s*:\s*3", done.stderr), done.stderr[-2000:]  # torchrun names the failed rank


def test_more_images_per_step_than_the_training_set_is_refused_naming_the_flag():
    check_global_batch(SimpleNamespace(batch_size=100, world_size=2), 200)
    with pytest.raises(DistributedError, match="--batch_size 64 per process x 4 processes"):
        check_global_batch(SimpleNamespace(batch_size=64, world_size=4), 200)


def test_sync_bn_without_cuda_is_refused_at_parse_time(root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_teacher.parse_option(["--sync_bn", *common(root)])
    assert exit_info.value.code == 2 and "--sync_bn needs CUDA" in capsys.readouterr().err
