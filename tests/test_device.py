"""Device choice (--device absent, 'cuda', 'cuda:i', under torchrun) with CUDA's presence patched, and a run that
sees CUDA gets past device selection to the first real CUDA call."""
import pytest
import torch

import train_teacher
from helper.distributed import DistributedError, choose_device
from helper.errors import UserError


@pytest.fixture
def gpus(monkeypatch):
    """Pretend ``count`` CUDA devices are visible, the current one being ``current``."""

    def set_up(count: int, current: int = 0) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)

    return set_up


def test_no_cuda_and_no_flag_gives_the_cpu(gpus):
    gpus(0)
    assert choose_device(None) == torch.device("cpu")


@pytest.mark.parametrize("requested", [None, "cuda"])
def test_cuda_without_an_index_gets_the_current_device(gpus, requested):
    gpus(4, current=2)
    assert choose_device(requested) == torch.device("cuda", 2)


@pytest.mark.parametrize("requested", [None, "cuda", "cuda:3"])
def test_under_torchrun_each_process_takes_the_gpu_of_its_local_rank(gpus, requested):
    gpus(4, current=0)
    assert choose_device(requested, local_rank=3) == torch.device("cuda", 3)


def test_an_explicit_index_is_kept(gpus):
    gpus(4, current=0)
    assert choose_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("local_rank", [None, 3])
def test_an_explicit_cpu_is_kept_even_with_gpus(gpus, local_rank):
    gpus(4)
    assert choose_device("cpu", local_rank=local_rank) == torch.device("cpu")


def test_under_torchrun_another_processs_gpu_is_refused(gpus):
    gpus(4)
    with pytest.raises(DistributedError, match="--device cuda:1 would put several processes on one GPU"):
        choose_device("cuda:1", local_rank=0)


def test_more_processes_than_gpus_is_refused_naming_the_count(gpus):
    gpus(2)
    with pytest.raises(DistributedError, match="LOCAL_RANK 2 has no GPU.*--nproc_per_node 2"):
        choose_device(None, local_rank=2)


def test_an_index_past_the_visible_gpus_is_refused(gpus):
    gpus(2)
    with pytest.raises(UserError, match="--device cuda:5: only 2 CUDA device"):
        choose_device("cuda:5")


def test_cuda_asked_for_without_cuda_is_refused(gpus):
    gpus(0)
    with pytest.raises(UserError, match="CUDA is not available.*--device cpu"):
        choose_device("cuda")


def test_a_word_that_is_no_device_is_refused(gpus):
    gpus(0)
    with pytest.raises(UserError, match="'gpu0' is not a device name"):
        choose_device("gpu0")


class ReachedCuda(Exception):
    """Raised by the patched first CUDA call."""


def test_a_plain_run_on_a_cuda_machine_reaches_the_first_cuda_call_with_an_indexed_device(gpus, monkeypatch,
                                                                                         tmp_path):
    """The README's command without --device: device selection must hand torch.cuda.set_device an indexed
    device (torch raises ValueError for a bare 'cuda')."""
    gpus(1)
    seen = []

    def set_device(device):
        seen.append(device)
        torch.cuda._get_device_index(device)  # torch's own check: needs an index
        raise ReachedCuda

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    with pytest.raises(ReachedCuda):
        train_teacher.main(["--model", "resnet8", "--epochs", "1", "--save_root", str(tmp_path),
                            "--data_folder", str(tmp_path / "data")])
    assert seen == [torch.device("cuda", 0)]


def test_a_saved_state_is_read_on_the_cpu_so_its_random_streams_restore_whatever_the_device(tmp_path):
    """A CUDA run mapped the whole state to the GPU: the numpy RNG keys became a CUDA tensor and
    set_rng_state failed. 'meta' stands in for a device that is not the CPU."""
    from argparse import Namespace

    from helper.engine import Job, Optimizers, Progress, load_state, make_optimizer, save_state
    from helper.util import rng_state, set_rng_state
    from models import model_dict

    opt = Namespace(save_folder=str(tmp_path), momentum=0.9, weight_decay=5e-4)
    model = model_dict["resnet8"](num_classes=100)
    job = Job(opt=opt, kind="teacher", device=torch.device("meta"), model=model, objective=None,
              train_loader=None, test_loader=None)
    optimizers = Optimizers(make_optimizer(model.parameters(), 0.1, opt), None, None)
    expected = rng_state()
    save_state(job, Progress(), optimizers)
    state = load_state(job, tmp_path / "state.pth")
    assert state["rng"]["numpy"]["keys"].device.type == "cpu"
    torch.manual_seed(123)
    set_rng_state(state["rng"])
    assert torch.equal(torch.get_rng_state(), expected["torch"])


def test_gpu_check_dry_run_lists_the_gpu_tests_the_readme_commands_and_every_method():
    import subprocess
    from pathlib import Path

    from distiller_zoo import DISTILLERS

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run"], cwd=root, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("tests/test_gpu.py", "train_teacher.py --model resnet32x4", "--compile reduce-overhead",
                   "--amp --channels_last", "SIGKILL", "--resume auto", "torch.distributed.run",
                   "--teacher resnet56 --student resnet20", "--teacher resnet32x4 --student resnet8x4"):
        assert needle in text, needle
    deterministic = [line for line in text.splitlines() if "--deterministic" in line and "--distill" in line]
    assert {line.split("--distill ")[1].split()[0] for line in deterministic} >= set(DISTILLERS)
