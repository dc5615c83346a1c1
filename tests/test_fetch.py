"""scripts/fetch_pretrained_teachers.sh against a local HTTP server, and scripts/verify_teacher.py."""
import functools
import http.server
import os
import shutil
import subprocess
import sys
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import TEACHER_ACCURACY
from helper.checkpoint import load_model_weights
from models import model_dict
from scripts import verify_teacher

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "fetch_pretrained_teachers.sh"
CKPT = "ckpt_epoch_240.pth"
PAPER_TEACHERS = ["wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50"]
TOOLS = [tool for tool in ("curl", "wget") if shutil.which(tool)]


class Server:
    """A static HTTP server on 127.0.0.1 over ``root`` that records every requested path."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        self.stalled_paths: set[str] = set()
        self.release = threading.Event()
        handler = functools.partial(self.Handler, self, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, server_record: "Server", *args, **kwargs):
            self.record = server_record
            super().__init__(*args, **kwargs)

        def do_GET(self):
            if self.path not in self.record.stalled_paths:
                return super().do_GET()
            # Half a download, then silence: the client is stuck mid-file until released.
            self.send_response(200)
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
            self.wfile.write(b"x" * 100_000)
            self.wfile.flush()
            self.record.release.wait(timeout=60)

        def log_request(self, code="-", size="-"):
            self.record.requests.append(f"{self.path} {code}")

        def log_message(self, format, *args):
            pass

    def publish(self, base: str, arch: str, data: bytes) -> None:
        path = self.root / base / f"{arch}_vanilla" / CKPT
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture
def server(tmp_path: Path):
    if not TOOLS:
        pytest.skip("the fetch script needs curl or wget; neither is installed")
    srv = Server(tmp_path / "www")
    srv.root.mkdir()
    srv.thread.start()
    yield srv
    srv.release.set()
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(scope="module")
def checkpoints(random_teacher) -> dict[str, bytes]:
    """Small valid checkpoints in the original's format, as file contents."""
    return {arch: random_teacher(arch).read_bytes() for arch in ("resnet56", "wrn_40_2")}


def script_env(base: str, fallback: str = "", tool: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k != "TEACHER_DEST"}
    env.update(PYTHON=sys.executable, TEACHER_BASE_URL=base, TEACHER_FALLBACK_URL=fallback,
               TEACHER_RETRIES="0", TEACHER_TIMEOUT="10", FETCH_TOOL=tool or TOOLS[0])
    return env


def fetch(dest: Path, *archs: str, base: str, fallback: str = "", tool: str | None = None
          ) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--dest", str(dest), *archs], env=script_env(base, fallback, tool),
                          capture_output=True, text=True, timeout=300)


def assert_loads(path: Path, arch: str) -> None:
    ckpt = load_model_weights(model_dict[arch](num_classes=100), path, arch)
    assert ckpt["epoch"] == 240


def test_requested_teachers_are_downloaded_verified_and_put_in_place(server, checkpoints, tmp_path):
    for arch in ("resnet56", "wrn_40_2"):
        server.publish("repo", arch, checkpoints[arch])
    dest = tmp_path / "models"
    run = fetch(dest, "resnet56", "wrn_40_2", base=f"{server.url}/repo")
    assert run.returncode == 0, run.stderr
    for arch in ("resnet56", "wrn_40_2"):
        assert_loads(dest / f"{arch}_vanilla" / CKPT, arch)
    assert sorted(p.name for p in dest.rglob("*") if p.is_file()) == [CKPT, CKPT]
    assert sorted(server.requests) == [f"/repo/{a}_vanilla/{CKPT} 200" for a in ("resnet56", "wrn_40_2")]


@pytest.mark.parametrize("tool", TOOLS)
def test_a_404_on_the_first_url_falls_back_to_the_second(server, checkpoints, tmp_path, tool):
    server.publish("mirror", "resnet56", checkpoints["resnet56"])
    dest = tmp_path / "models"
    run = fetch(dest, "resnet56", base=f"{server.url}/gone", fallback=f"{server.url}/mirror", tool=tool)
    assert run.returncode == 0, run.stderr
    assert_loads(dest / "resnet56_vanilla" / CKPT, "resnet56")
    assert server.requests == [f"/gone/resnet56_vanilla/{CKPT} 404", f"/mirror/resnet56_vanilla/{CKPT} 200"]


def test_a_corrupt_download_is_rejected_without_leaving_a_file_and_the_others_still_come(
        server, checkpoints, tmp_path):
    server.publish("repo", "resnet56", checkpoints["resnet56"][:50_000])
    server.publish("repo", "wrn_40_2", checkpoints["wrn_40_2"])
    dest = tmp_path / "models"
    run = fetch(dest, "resnet56", "wrn_40_2", base=f"{server.url}/repo")
    assert run.returncode == 1
    assert not (dest / "resnet56_vanilla").exists()
    assert_loads(dest / "wrn_40_2_vanilla" / CKPT, "wrn_40_2")
    failure = next(line for line in run.stderr.splitlines() if "FAILED" in line)
    assert failure.startswith("[resnet56] FAILED") and "not a valid resnet56 checkpoint" in failure
    assert "Traceback" not in run.stderr


def test_a_checkpoint_of_another_architecture_is_rejected(server, checkpoints, tmp_path):
    server.publish("repo", "wrn_40_2", checkpoints["resnet56"])
    run = fetch(tmp_path / "models", "wrn_40_2", base=f"{server.url}/repo")
    assert run.returncode == 1
    assert "does not fit architecture wrn_40_2" in run.stderr
    assert not (tmp_path / "models" / "wrn_40_2_vanilla").exists()


def test_an_interrupted_download_leaves_no_partial_file(server, tmp_path):
    server.stalled_paths.add(f"/repo/resnet56_vanilla/{CKPT}")
    folder = tmp_path / "models" / "resnet56_vanilla"
    script = subprocess.Popen(["bash", str(SCRIPT), "--dest", str(tmp_path / "models"), "resnet56"],
                              env=script_env(f"{server.url}/repo"), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size > 0 for p in folder.glob(".*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(folder.glob(".*")), "the download never started"
        os.killpg(script.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        assert script.wait(timeout=30) == 130
    finally:
        if script.poll() is None:
            script.kill()
    assert not (tmp_path / "models").exists()  # no partial file, and no folder left empty


def test_a_valid_file_already_in_place_is_skipped_without_asking_the_server(server, checkpoints, tmp_path):
    target = tmp_path / "models" / "resnet56_vanilla" / CKPT
    target.parent.mkdir(parents=True)
    target.write_bytes(checkpoints["resnet56"])
    before = target.stat().st_mtime_ns
    run = fetch(tmp_path / "models", "resnet56", base=f"{server.url}/repo")
    assert run.returncode == 0, run.stderr
    assert server.requests == []
    assert target.stat().st_mtime_ns == before
    assert "skipped" in run.stdout


def test_a_corrupt_file_already_in_place_is_replaced(server, checkpoints, tmp_path):
    server.publish("repo", "resnet56", checkpoints["resnet56"])
    target = tmp_path / "models" / "resnet56_vanilla" / CKPT
    target.parent.mkdir(parents=True)
    target.write_bytes(b"<html>not found</html>")
    run = fetch(tmp_path / "models", "resnet56", base=f"{server.url}/repo")
    assert run.returncode == 0, run.stderr
    assert_loads(target, "resnet56")
    assert os.listdir(target.parent) == [CKPT]


def test_without_names_all_six_paper_teachers_are_requested(server, tmp_path):
    run = fetch(tmp_path / "models", base=f"{server.url}/empty")
    assert run.returncode == 1
    assert server.requests == [f"/empty/{a}_vanilla/{CKPT} 404" for a in PAPER_TEACHERS]
    assert f"could not fetch 6 of 6 teachers: {' '.join(PAPER_TEACHERS)}" in run.stderr
    assert set(PAPER_TEACHERS) <= set(model_dict)


def test_a_failed_fetch_leaves_no_empty_folder_and_says_what_to_do_next(server, checkpoints, tmp_path):
    import train_teacher

    server.publish("repo", "wrn_40_2", checkpoints["wrn_40_2"])
    dest = tmp_path / "new" / "save" / "models"
    run = fetch(dest, "resnet56", base=f"{server.url}/gone")  # offline, as far as this script can tell
    assert run.returncode == 1
    assert not (tmp_path / "new").exists()
    assert "TEACHER_FALLBACK_URL" in run.stderr and "TEACHER_BASE_URL" in run.stderr
    # The exact command that trains the teacher and puts it where the fetch would have.
    command = run.stderr.strip().splitlines()[-1]
    assert command == (f"  cd {ROOT} && {sys.executable} train_teacher.py --model resnet56 && mkdir -p "
                       f"{dest}/resnet56_vanilla && cp save/models/resnet56_cifar100_lr_0.05_decay_0.0005_trial_0/"
                       f"{CKPT} {dest}/resnet56_vanilla/{CKPT}")
    trained = Path(train_teacher.parse_option(["--model", "resnet56"]).save_folder)
    assert f"cp {trained}/{CKPT} " in command  # train_teacher.py writes ckpt_epoch_240.pth there
    # Where some teachers came, only the folders of the failed ones go.
    run = fetch(dest, "wrn_40_2", "resnet56", base=f"{server.url}/repo")
    assert run.returncode == 1
    assert sorted(p.name for p in dest.iterdir()) == ["wrn_40_2_vanilla"]


def test_an_unknown_teacher_name_is_a_usage_error_before_any_download(server, tmp_path):
    run = fetch(tmp_path / "models", "resnet56", "resnet57", base=f"{server.url}/repo")
    assert run.returncode == 2
    assert "unknown teacher 'resnet57'" in run.stderr
    assert server.requests == []


def test_verify_teacher_reports_one_line_and_fails_on_a_mismatch(checkpoints, tmp_path, capsys):
    path = tmp_path / "ckpt.pth"
    path.write_bytes(checkpoints["resnet56"])
    assert verify_teacher.main([str(path), "resnet56"]) == 0
    expected = f"resnet56 checkpoint is valid, epoch 240, accuracy {TEACHER_ACCURACY:.2f}"
    assert capsys.readouterr().out.strip() == expected
    assert verify_teacher.main([str(path), "resnet110"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "does not fit architecture resnet110" in err
    assert verify_teacher.main([str(path), "resnet9"]) == 1
    assert "unknown architecture 'resnet9'" in capsys.readouterr().err


def test_verify_teacher_reads_checkpoints_saved_from_cuda_tensors_on_any_machine(tmp_path, capsys):
    # The paper's teachers were saved from GPU tensors. Tagging CPU storages as "cuda:0" while saving
    # reproduces that without a GPU; it runs in a child process because the tag cannot be unregistered.
    path = tmp_path / "cuda_saved.pth"
    make = ("import sys, torch; sys.path.insert(0, sys.argv[2]); from models import model_dict; "
            "torch.serialization.register_package(0, lambda obj: 'cuda:0', lambda obj, location: None); "
            "model = model_dict['resnet8'](num_classes=100); "
            "torch.save({'epoch': 240, 'model': model.state_dict(), 'accuracy': torch.tensor(70.0)}, sys.argv[1])")
    subprocess.run([sys.executable, "-c", make, str(path), str(ROOT)], check=True, timeout=120)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    assert verify_teacher.main([str(path), "resnet8"]) == 0
    assert capsys.readouterr().out.strip() == "resnet8 checkpoint is valid, epoch 240, accuracy 70.00"
