"""scripts/reproduce.py: the paper's tables as one resumable sweep, on worker processes or a Ray cluster.

The sweeps are tiny (1-epoch runs on the shared 200-image synthetic set) but real: every run is a training
script in its own process, and the tables are checked against the runs' own results.json files."""
import contextlib
import fcntl
import io
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import teacher_checkpoint
from scripts import paper, reproduce
from scripts.reproduce import RunLock, SweepError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# 2 pairs x 2 methods x 2 trials, teachers trained by the sweep: 2 teachers + 2 vanilla students + 8 distillations.
SMALL = ["--pairs", "resnet14:resnet8,resnet8:resnet8", "--methods", "kd,crd", "--trials", "2", "--train_teachers",
         "--runs_per_gpu", "2", "--device", "cpu", "--seed_base", "0"]
TRAINING = ["--epochs", "1", "--nce_k", "16", "--num_workers", "0", "--deterministic", "--print_freq", "50"]


def sweep_argv(data: Path, save_root: Path, *extra: str) -> list[str]:
    return [*SMALL, "--save_root", str(save_root), "--data_folder", str(data), *TRAINING, *extra]


def call(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = reproduce.main(argv)
    return code, out.getvalue()


def report(save_root: Path) -> dict:
    return json.loads((save_root / "reproduce" / "reproduce.json").read_text())


def finished_results(save_root: Path) -> dict[Path, dict]:
    found = {}
    for path in save_root.rglob("results.json"):
        if "reproduce" not in path.parts:
            data = json.loads(path.read_text())
            if data.get("finished"):
                found[path] = data
    return found


def cell_values(save_root: Path) -> dict[tuple[str, str, str], list[float]]:
    return {(c["row"], c["teacher"], c["student"]): sorted(c["values"]) for c in report(save_root)["cells"]}


@pytest.fixture(scope="module")
def killed_and_rerun(cifar_data, tmp_path_factory):
    """The small sweep started in a process that is killed (SIGKILL) once a few runs have finished, then the
    same command run again to the end."""
    save_root = tmp_path_factory.mktemp("sweep")
    argv = sweep_argv(cifar_data, save_root)
    with (save_root.parent / f"{save_root.name}.out").open("w") as out:
        proc = subprocess.Popen([sys.executable, "scripts/reproduce.py", *argv], cwd=REPO, env=ENV, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while len(finished_results(save_root)) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for lock in save_root.rglob(".*.lock"):  # the runs it started stop too (SIGTERM when their parent dies)
        with lock.open() as f:
            fcntl.flock(f, fcntl.LOCK_EX)
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in finished_results(save_root)}
    logs = {path: path.stat().st_size for path in (save_root / "reproduce" / "logs").iterdir()}
    code, output = call(argv)
    return save_root, before, logs, code, output


def test_small_sweep_table_holds_the_mean_and_std_of_the_runs_results(killed_and_rerun):
    save_root, _, _, code, output = killed_and_rerun
    assert code == 0, output
    results = list(finished_results(save_root).values())
    assert len(results) == 12
    expected: dict[tuple[str, str, str], list[float]] = {}
    for r in results:
        if r["kind"] == "student":
            row = {"kd": "KD", "crd": "CRD"}[r["distill"]]
            expected.setdefault((row, r["teacher"], r["model"]), []).append(r["last_acc"])
        elif str(r["trial"]) == "0":  # the teachers the sweep trained
            for pair in (("resnet14", "resnet8"), ("resnet8", "resnet8")):
                if pair[0] == r["model"]:
                    expected[("Teacher", *pair)] = [r["last_acc"]]
        else:  # vanilla students, trials 1 and 2
            for teacher in ("resnet14", "resnet8"):
                expected.setdefault(("Student", teacher, r["model"]), []).append(r["last_acc"])
    cells = {(c["row"], c["teacher"], c["student"]): c for c in report(save_root)["cells"]}
    assert set(cells) == set(expected)
    for key, values in expected.items():
        cell = cells[key]
        assert cell["n"] == len(values) == (1 if key[0] == "Teacher" else 2)
        assert cell["mean"] == pytest.approx(statistics.fmean(values))
        assert cell["std"] == pytest.approx(statistics.stdev(values) if len(values) > 1 else 0.0)
        assert cell["paper"] is None  # not a pair of the paper
    markdown = (save_root / "reproduce" / "reproduce.md").read_text()
    kd = cells[("KD", "resnet14", "resnet8")]
    assert f"{kd['mean']:.2f} ± {kd['std']:.2f} (2)" in markdown


def test_killed_sweep_reruns_only_the_runs_that_had_not_finished(killed_and_rerun):
    save_root, before, logs, code, output = killed_and_rerun
    assert 4 <= len(before) < 12, "the sweep was to be killed midway"
    assert f"12 runs: {len(before)} already finished" in output
    for path, (mtime, content) in before.items():  # never rerun: not even rewritten
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content, path
    runs = report(save_root)["runs"]
    assert all(run["status"] in ("already finished", "finished") for run in runs)
    assert sum(run["status"] == "already finished" for run in runs) == len(before)
    markdown = (save_root / "reproduce" / "reproduce.md").read_text()
    assert f"{len(before)} already finished, {12 - len(before)} finished" in markdown
    finished_before = {str(path.parent) for path in before}
    for run in runs:
        log = reproduce.log_file(save_root / "reproduce" / "logs", run["id"])
        if run["folder"] in finished_before and log in logs:
            assert log.stat().st_size == logs[log], f"{run['id']} ran again"
        assert run["command"].endswith("--resume auto")


def test_ray_engine_gives_the_same_table(killed_and_rerun, cifar_data, tmp_path):
    pytest.importorskip("ray")
    save_root = tmp_path / "ray"
    done = subprocess.run([sys.executable, "scripts/reproduce.py", *sweep_argv(cifar_data, save_root), "--engine",
                           "ray", "--address", "local"], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ray engine" in done.stdout
    assert len(finished_results(save_root)) == 12
    assert cell_values(save_root) == cell_values(killed_and_rerun[0])


@pytest.fixture
def fetched_teacher(tmp_path):
    """A paper teacher's checkpoint where the fetch script puts it (random weights: nothing is downloaded)."""
    def place(arch: str) -> Path:
        path = Path(paper.fetched_teacher_path(arch, str(tmp_path)))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(teacher_checkpoint(arch), path)
        return path

    return place


def test_failing_run_is_reported_with_its_command_and_the_others_finish(cifar_data, tmp_path, fetched_teacher):
    fetched_teacher("wrn_40_2")
    # FSP needs equal channel counts: wrn_40_2 -> resnet8 fails once the script builds the method.
    argv = ["--pairs", "wrn_40_2:resnet8", "--methods", "kd,fsp", "--trials", "1", "--runs_per_gpu", "2",
            "--device", "cpu", "--save_root", str(tmp_path), "--data_folder", str(cifar_data), *TRAINING]
    code, output = call(argv)
    assert code == 1
    runs = {run["id"]: run for run in report(tmp_path)["runs"]}
    failed = runs["fsp wrn_40_2->resnet8 trial 1"]
    assert failed["status"] == "failed"
    assert any("equal channel counts" in line for line in failed["error"])
    assert failed["command"] in output and "--distill fsp" in failed["command"]
    assert shlex.split(failed["command"])[-2:] == ["--resume", "auto"]
    assert "FAILED fsp wrn_40_2->resnet8 trial 1" in output
    assert runs["kd wrn_40_2->resnet8 trial 1"]["status"] == "finished"
    assert runs["vanilla resnet8 trial 1"]["status"] == "finished"
    cells = {c["row"]: c for c in report(tmp_path)["cells"]}
    assert cells["KD"]["n"] == 1 and cells["FSP"]["n"] == 0
    kd = json.loads(Path(runs["kd wrn_40_2->resnet8 trial 1"]["folder"], "results.json").read_text())
    assert cells["Teacher"]["values"] == [kd["teacher_acc"]]  # the fetched teacher, as its student measured it
    assert "equal channel counts" in (tmp_path / "reproduce" / "reproduce.md").read_text()


def test_a_run_locked_by_another_sweep_is_left_to_it(cifar_data, tmp_path, fetched_teacher):
    fetched_teacher("resnet56")
    argv = ["--pairs", "resnet56:resnet8", "--methods", "kd", "--trials", "1", "--runs_per_gpu", "2",
            "--device", "cpu", "--save_root", str(tmp_path), "--data_folder", str(cifar_data), *TRAINING]
    args, extra = reproduce.parse_args(argv)
    plan = reproduce.build_plan(args, reproduce.route_flags(extra), "cpu")
    vanilla, kd = plan.runs
    other_sweep = RunLock(vanilla)
    assert other_sweep.acquire()

    def finish_it_elsewhere() -> None:  # the other sweep ends its run once ours has trained the KD student
        deadline = time.monotonic() + 200
        while not reproduce.is_done(kd) and time.monotonic() < deadline:
            time.sleep(0.1)
        vanilla.folder.mkdir(parents=True)
        (vanilla.folder / "results.json").write_text(json.dumps(
            {"kind": "teacher", "model": "resnet8", "trial": "1", "finished": True, "epochs_done": 1, "epochs": 1,
             "last_acc": 42.0}))
        other_sweep.release()

    thread = threading.Thread(target=finish_it_elsewhere)
    thread.start()
    code, output = call(argv)
    thread.join()
    assert code == 0, output
    assert "running in another sweep" in output and "finished by another sweep" in output
    assert not (tmp_path / "reproduce" / "logs" / "vanilla_resnet8_trial_1.log").exists()
    cells = {c["row"]: c for c in report(tmp_path)["cells"]}
    assert cells["Student"]["values"] == [42.0]


def test_run_cifar_distill_sh_is_generated_from_the_table():
    assert paper.DISTILL_SCRIPT.read_text() == paper.render_distill_script(), \
        "scripts/run_cifar_distill.sh is out of date: python scripts/paper.py --write"


def test_teacher_scripts_list_the_tables_teachers():
    vanilla = (REPO / "scripts" / "run_cifar_vanilla.sh").read_text()
    trained = tuple(line.split("--model ")[1].split()[0] for line in vanilla.splitlines()
                    if line.startswith("python train_teacher.py"))
    fetch = (REPO / "scripts" / "fetch_pretrained_teachers.sh").read_text()
    fetched = tuple(next(line for line in fetch.splitlines() if line.startswith("TEACHERS=("))[10:-1].split())
    assert trained == fetched == paper.TEACHERS


def test_each_training_flag_goes_to_the_scripts_that_accept_it():
    routed = reproduce.route_flags(["--epochs", "2", "--nce_k=16", "--amp", "--lr_decay_rate", "-0.5"])
    assert routed["train_teacher.py"] == ["--epochs", "2", "--amp", "--lr_decay_rate", "-0.5"]
    assert routed["train_student.py"] == ["--epochs", "2", "--nce_k=16", "--amp", "--lr_decay_rate", "-0.5"]
    with pytest.raises(SweepError, match="unknown flag --epoch_count"):
        reproduce.route_flags(["--epoch_count", "2"])
    with pytest.raises(SweepError, match="--distill is set by the sweep"):
        reproduce.route_flags(["--distill", "kd"])


def test_paper_settings_reach_each_run(tmp_path):
    args, extra = reproduce.parse_args(["--table", "cross", "--methods", "kd,fsp,dkd", "--trials", "1",
                                        "--save_root", str(tmp_path)])
    plan = reproduce.build_plan(args, reproduce.route_flags(extra), "cpu")
    runs = {run.id: run for run in plan.runs}
    assert not any(run.method == "fsp" for run in plan.runs)  # not applicable across styles (Table 2)
    mobile = runs["kd vgg13->MobileNetV2 trial 1"]
    assert mobile.error is None and mobile.argv[:12] == [
        "--path_t", f"{tmp_path}/models/vgg13_vanilla/ckpt_epoch_240.pth", "--distill", "kd", "--model_s",
        "MobileNetV2", "-r", "0.1", "-a", "0.9", "-b", "0"]
    assert "lr_0.01" in str(runs["vanilla MobileNetV2 trial 1"].folder)  # the small-model learning rate
    assert runs["dkd ResNet50->MobileNetV2 trial 1"].argv[10:14] == ["-b", "1", "--dkd_beta", "8"]
    assert runs["dkd vgg13->MobileNetV2 trial 1"].argv[10:14] == ["-b", "1", "--dkd_beta", "6"]
    assert plan.fetch == ["vgg13", "ResNet50", "resnet32x4", "wrn_40_2"]


def test_dry_run_prints_the_plan_and_its_estimate_and_runs_nothing(tmp_path):
    code, output = call(["--dry_run", "--pairs", "resnet56:resnet20,resnet110:resnet32,resnet32x4:resnet8x4",
                         "--methods", "kd",
                         "--trials", "1", "--device", "cpu", "--runs_per_gpu", "3", "--save_root", str(tmp_path),
                         "--epochs", "2"])
    assert code == 0
    assert ("runs: 6 = teachers fetched (resnet56, resnet110, resnet32x4 to download), 3 vanilla students, "
            "3 distillations") in output
    assert "3 runs at once" in output
    hours = {line.split(". ", 1)[1].split(" ~")[0]: float(line.split("~")[1].split(" h")[0])
             for line in output.splitlines() if " ~" in line}
    # From the benchmark's measured pairs (resnet56 -> resnet20, resnet32x4 -> resnet8x4), scaled by FLOPs.
    assert hours["kd resnet32x4->resnet8x4 trial 1"] > hours["kd resnet56->resnet20 trial 1"] > 0
    assert hours["kd resnet110->resnet32 trial 1"] > hours["kd resnet56->resnet20 trial 1"]
    total = float(output.split("estimate: ")[1].split(" ")[0])
    assert total == pytest.approx(sum(hours.values()), abs=0.1)
    assert not any(tmp_path.iterdir())


def test_ray_engine_without_ray_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert reproduce.main(["--engine", "ray", "--trials", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'ray" in err


def test_report_only_rerun_commands_say_device_cpu_only_when_it_was_asked_for(tmp_path):
    argv = ["--report_only", "--pairs", "resnet56:resnet20", "--methods", "kd", "--trials", "1",
            "--save_root", str(tmp_path)]
    assert call(argv)[0] == 0
    commands = [run["command"] for run in report(tmp_path)["runs"]]
    assert len(commands) == 2 and not any("--device" in shlex.split(c) for c in commands)  # e.g. after a GPU sweep
    assert call([*argv, "--device", "cpu"])[0] == 0
    for command in (run["command"] for run in report(tmp_path)["runs"]):
        words = shlex.split(command)
        assert words[words.index("--device") + 1] == "cpu"
    args, extra = reproduce.parse_args(argv[1:])
    for device, flagged in (("cpu", True), ("cuda", False), (None, False)):  # a sweep without a GPU: --device cpu
        plan = reproduce.build_plan(args, reproduce.route_flags(extra), device)
        assert all(("--device" in run.argv) == flagged for run in plan.runs), device


@pytest.mark.parametrize("pair", ["vgg13", "vgg13:", ":vgg8", "vgg13:nonet", "vgg13:vgg8,resnet56:resnet20"])
def test_paper_script_refuses_a_pair_that_is_not_teacher_colon_student(pair, capsys):
    with pytest.raises(SystemExit) as exit_:
        paper.main(["--pair", pair])
    assert exit_.value.code == 2
    assert "--pair" in capsys.readouterr().err
    assert paper.main(["--pair", "vgg13:vgg8"]) == 0
    assert "--model_s vgg8 " in capsys.readouterr().out


def test_paper_script_runs_as_a_script():
    done = subprocess.run([sys.executable, "scripts/paper.py", "--pair", "vgg13"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "'vgg13' is not TEACHER:STUDENT" in done.stderr


def toy_run(folder: Path, script: str = "train_teacher.py", name: str = "vanilla resnet8 trial 1") -> reproduce.Run:
    return reproduce.Run(name, "vanilla", script, ["--model", "resnet8", "--trial", "1"], folder, epochs=1,
                         model="resnet8", trial=1)


def test_runs_the_sweep_stops_are_interrupted_not_failed_even_when_killed(tmp_path, monkeypatch):
    """Ctrl-C: a run that ignores the SIGTERM is killed after the grace time (exit status -9), and still counts
    as interrupted (a rerun continues it), in the sweep and in reproduce.json."""
    from scripts import reproduce_report

    script = tmp_path / "stubborn.py"
    script.write_text("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
                      "time.sleep(120)\n")
    run = toy_run(tmp_path / "run", script=str(script))
    plan = reproduce.Plan([run], {}, [], [], [], 1, "cpu")
    engine = reproduce.LocalEngine([], 1, 1)
    monkeypatch.setattr(engine, "STOP_TIMEOUT_S", 0.5)
    report_dir = tmp_path / "reproduce"
    sweep = reproduce.Sweep(plan, engine, report_dir, 1, reproduce.Progress(io.StringIO(), live=False))
    sweep.initial_states()
    sweep.fill()
    proc = engine.active[run.id][0]
    log = sweep.log_path(run)
    deadline = time.monotonic() + 60
    while "ready" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    sweep.interrupt()
    assert proc.returncode == -signal.SIGKILL
    assert sweep.states[run.id].status == "interrupted"
    reproduce_report.write(plan, sweep, report_dir)
    assert [r["status"] for r in report(tmp_path)["runs"]] == ["interrupted"]


def test_a_run_that_failed_before_the_interrupt_stays_failed(tmp_path):
    run = toy_run(tmp_path / "run", script=str(tmp_path / "missing.py"))  # python exits 2 at once
    engine = reproduce.LocalEngine([], 1, 1)
    sweep = reproduce.Sweep(reproduce.Plan([run], {}, [], [], [], 1, "cpu"), engine, tmp_path / "reproduce", 1,
                            reproduce.Progress(io.StringIO(), live=False))
    sweep.initial_states()
    sweep.fill()
    engine.active[run.id][0].wait(60)
    sweep.interrupt()
    assert sweep.states[run.id].status == "failed"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie has stopped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_training_process_stops_when_the_process_that_started_it_is_killed():
    code = ("import functools, os, subprocess, sys, time\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            "from scripts.reproduce import _die_with_parent\n"
            "child = subprocess.Popen(['sleep', '60'], preexec_fn=functools.partial(_die_with_parent, os.getpid()))\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its parent"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
        parent.stdout.close()


def test_a_training_process_whose_parent_is_already_gone_stops_at_once():
    """The parent died between fork and prctl: the child has another parent already and stops itself."""
    not_the_parent = os.getppid()
    proc = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: reproduce._die_with_parent(not_the_parent))
    try:
        assert proc.wait(10) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class FakePopen:
    """subprocess.Popen for LocalEngine.start: records the command and its environment, runs nothing."""

    started: list = []

    def __init__(self, args, **kwargs):
        self.args, self.kwargs, self.returncode = args, kwargs, None
        FakePopen.started.append(self)

    def poll(self):
        return self.returncode


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two GPUs (probe_gpus patched) and a Popen that starts nothing."""
    monkeypatch.setattr(reproduce, "probe_gpus", lambda: [{"free_mb": 4000.0, "total_mb": 8000.0},
                                                          {"free_mb": 3000.0, "total_mb": 8000.0}])
    monkeypatch.setattr(reproduce, "run_memory_mb", lambda: 1000.0)
    monkeypatch.setattr(reproduce.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(FakePopen, "started", [])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def start_runs(tmp_path: Path, engine: reproduce.LocalEngine, count: int) -> list[tuple[str, str]]:
    """(where, CUDA_VISIBLE_DEVICES) of ``count`` runs started one after the other."""
    placed = []
    for i in range(count):
        run = toy_run(tmp_path / f"run{i}", name=f"run {i}")
        where = engine.start(run, {"OMP_NUM_THREADS": "1"}, tmp_path / f"run{i}.log", RunLock(run))
        placed.append((where, FakePopen.started[-1].kwargs["env"].get("CUDA_VISIBLE_DEVICES")))
    return placed


def test_local_engine_packs_runs_onto_the_gpus_by_load(fake_gpus, tmp_path):
    args, _ = reproduce.parse_args(["--runs_per_gpu", "2"])
    engine = reproduce.make_local_engine(args)
    assert (len(engine.gpus), engine.runs_per_gpu, engine.capacity) == (2, 2, 4)
    assert start_runs(tmp_path, engine, 4) == [("gpu0", "0"), ("gpu1", "1"), ("gpu0", "0"), ("gpu1", "1")]
    FakePopen.started[1].returncode = 0  # a run on GPU 1 ends: the next one goes there
    assert [run_id for run_id, _ in engine.poll()] == ["run 1"]
    engine.start(toy_run(tmp_path / "run9", name="run 9"), {}, tmp_path / "run9.log", RunLock(toy_run(tmp_path / "r9")))
    assert FakePopen.started[-1].kwargs["env"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert FakePopen.started[0].kwargs["env"]["OMP_NUM_THREADS"] == "1"


def test_local_engine_maps_its_gpus_onto_the_visible_ones(fake_gpus, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    args, _ = reproduce.parse_args([])
    engine = reproduce.make_local_engine(args)
    assert engine.runs_per_gpu == 2  # from the free memory: min(3400 // 1000, 2550 // 1000)
    assert start_runs(tmp_path, engine, 3) == [("gpu0", "4"), ("gpu1", "6"), ("gpu0", "4")]


def test_local_engine_on_the_cpu_sets_no_gpu(fake_gpus, tmp_path):
    args, _ = reproduce.parse_args(["--device", "cpu", "--runs_per_gpu", "3"])
    engine = reproduce.make_local_engine(args)
    assert (engine.gpus, engine.capacity) == ([], 3)
    assert start_runs(tmp_path, engine, 2) == [("cpu", None), ("cpu", None)]


def test_engines_start_the_command_the_report_shows(fake_gpus, tmp_path):
    run = toy_run(tmp_path / "run")
    assert run.command().endswith(" --resume auto")
    engine = reproduce.LocalEngine([], 1, 1)
    engine.start(run, {}, tmp_path / "run.log", RunLock(run))
    started = FakePopen.started[-1]
    assert started.args == [sys.executable, *shlex.split(run.command())[1:]]
    preexec = started.kwargs["preexec_fn"]
    assert preexec.func is reproduce._die_with_parent and preexec.args == (os.getpid(),)

    class Task:  # a Ray remote function: records what it is given
        def options(self, **options):
            return self

        def remote(self, *args):
            self.args = args
            return object()

    ray_engine = object.__new__(reproduce.RayEngine)
    ray_engine.task, ray_engine.options, ray_engine.active = Task(), {}, {}
    assert ray_engine.start(run, {}, tmp_path / "run.log", RunLock(run)) == "ray"
    assert ray_engine.task.args[0] == shlex.split(run.command())[1:]


def test_probe_gpus_reads_each_gpus_free_and_total_memory(monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, json.dumps([[2 * 2**30, 8 * 2**30], [2**29, 2**30]]), "")

    monkeypatch.setattr(reproduce.subprocess, "run", fake_run)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert reproduce.probe_gpus() == [] and calls == []  # no CUDA: no child process
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert reproduce.probe_gpus() == [{"free_mb": 2048.0, "total_mb": 8192.0}, {"free_mb": 512.0, "total_mb": 1024.0}]
    assert calls[0][:2] == [sys.executable, "-c"]

    def failing_run(command, **kwargs):
        raise subprocess.CalledProcessError(1, command)

    monkeypatch.setattr(reproduce.subprocess, "run", failing_run)
    assert reproduce.probe_gpus() == []
    monkeypatch.setattr(reproduce.subprocess, "run",
                        lambda command, **kwargs: subprocess.CompletedProcess(command, 0, "not json", ""))
    assert reproduce.probe_gpus() == []
