"""Reproduce the paper's CIFAR-100 tables in one command: a resumable sweep, packed onto the GPUs.

    python scripts/reproduce.py [--table same|cross|all] [--pairs T:S,...] [--methods kd,crd,...] [--trials 3]
        [--train_teachers] [--engine local|ray [--address ADDR]] [--runs_per_gpu N] [--dry_run]
        [--save_root ./save] [any training flag, e.g. --epochs 240 --amp --data_folder ./data]

Every run's settings come from scripts/paper.py. Teachers first (fetched, or trained with --train_teachers),
then the vanilla students and the distillations, each student waiting for its teacher. Rerunning the same
command finishes the sweep: finished runs are skipped, interrupted ones continue (--resume auto), and a lock
per run folder keeps two sweeps from running the same run. The table goes to <save_root>/reproduce/.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import functools
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if __name__ == "__main__":  # one module object, also for scripts.reproduce_report's imports from it
    sys.modules.setdefault("scripts.reproduce", sys.modules[__name__])

from helper.errors import UserError  # noqa: E402
from scripts import paper  # noqa: E402
from scripts.paper import Pair  # noqa: E402

TEACHER_SCRIPT, STUDENT_SCRIPT = "train_teacher.py", "train_student.py"
TEACHER_TRIAL = 0  # teachers trained by the sweep; vanilla students and distillations use trials 1..N
REPORT_FOLDER = "reproduce"
# Flags the sweep sets for each run itself.
RESERVED = {"--model", "-t", "--trial", "--model_s", "--model_t", "--path_t", "--distill", "-r", "--gamma", "-a",
            "--alpha", "-b", "--beta", "--resume", "--overwrite", "--device", "--save_root", "-h", "--help"}
MAX_RUNS_PER_GPU = 8  # default cap: beyond it a CIFAR run adds memory, not throughput
RUN_MEMORY_MB = 2500  # default per-run GPU memory (context + dataset + models) when no CUDA benchmark says
TAIL_LINES = 15  # log lines kept for a failed run


class SweepError(UserError):
    """A bad sweep flag or a missing input (one line)."""


# ---- plan -------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One training run of the sweep."""

    id: str
    kind: str  # "teacher", "vanilla" or "student"
    script: str
    argv: list[str]
    folder: Path | None  # the run folder (None: the command does not parse, see error)
    epochs: int = 0
    init_epochs: int = 0  # the init stage's epochs (AB, FT, FSP)
    pair: Pair | None = None
    model: str = ""  # the trained network
    method: str | None = None  # paper.METHODS key (students)
    trial: int = 0
    deps: list[str] = field(default_factory=list)
    error: str | None = None  # why the command does not parse

    def words(self, resume: bool = True) -> list[str]:
        """The training command after the interpreter, as the engines start it: script, flags, --resume auto."""
        return [self.script, *self.argv, *(["--resume", "auto"] if resume else [])]

    def command(self, resume: bool = True) -> str:
        """The training command as one shell line (the engines run ``words`` with this interpreter)."""
        return shlex.join(["python", *self.words(resume)])


@dataclass
class Plan:
    runs: list[Run]
    teachers: dict[str, str]  # arch -> checkpoint path the students use
    fetch: list[str]  # teachers to download first
    pairs: list[Pair]
    methods: list[str]
    trials: int
    device: str | None  # "cuda" or "cpu" where the runs train; None: not known (--report_only)

    def by_id(self) -> dict[str, Run]:
        return {run.id: run for run in self.runs}


def split_flags(words: list[str]) -> list[list[str]]:
    """['--epochs', '2', '--amp'] -> [['--epochs', '2'], ['--amp']] (a negative number is a value)."""
    groups: list[list[str]] = []
    for word in words:
        if word.startswith("-") and not re.fullmatch(r"-\d[\d.e+-]*", word):
            groups.append([word])
        elif not groups:
            raise SweepError(f"unexpected argument {word!r}: training flags start with '-' (see --help)")
        else:
            groups[-1].append(word)
    return groups


def script_flags() -> dict[str, set[str]]:
    import train_student
    import train_teacher

    return {script: set(module.get_args_parser()._option_string_actions)
            for script, module in ((TEACHER_SCRIPT, train_teacher), (STUDENT_SCRIPT, train_student))}


def route_flags(extra: list[str]) -> dict[str, list[str]]:
    """The training flags each script gets: every flag goes to each script that accepts it."""
    accepted = script_flags()
    routed: dict[str, list[str]] = {script: [] for script in accepted}
    for group in split_flags(extra):
        flag = group[0].split("=", 1)[0]
        if flag in RESERVED:
            raise SweepError(f"{flag} is set by the sweep for each run (or is one of its own flags); drop it "
                             f"(see python scripts/reproduce.py --help)")
        takers = [script for script, flags in accepted.items() if flag in flags]
        if not takers:
            raise SweepError(f"unknown flag {flag}: neither {TEACHER_SCRIPT} nor {STUDENT_SCRIPT} accepts it "
                             f"(see their --help)")
        for script in takers:
            routed[script] += group
    return routed


def parse_run(script: str, argv: list[str]):
    """The script's own options for ``argv`` (folder, epochs) or the one-line error it would print."""
    import train_student
    import train_teacher

    module = train_student if script == STUDENT_SCRIPT else train_teacher
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return module.parse_option([*argv, "--device", "cpu"]), None  # the folder does not depend on it
    except SystemExit:
        lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
        return None, (lines[-1] if lines else f"{script} refuses these arguments")


def make_run(run_id: str, kind: str, script: str, argv: list[str], **info) -> Run:
    opt, error = parse_run(script, argv)
    run = Run(run_id, kind, script, argv, None, error=error, **info)
    if opt is not None:
        run.folder = Path(opt.save_folder)
        run.epochs = opt.epochs
        if kind == "student":
            from distiller_zoo import DISTILLERS

            run.init_epochs = opt.init_epochs if DISTILLERS[opt.distill].has_init_stage else 0
    return run


def parse_pairs(text: str) -> list[Pair]:
    from cli.options import model_names

    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        teacher, sep, student = item.partition(":")
        if not sep or not teacher or not student:
            raise SweepError(f"--pairs: {item!r} is not TEACHER:STUDENT (e.g. --pairs resnet56:resnet20)")
        for name in (teacher, student):
            if name not in model_names():
                raise SweepError(f"--pairs: unknown network {name!r} (choose from {', '.join(model_names())})")
        pairs.append((teacher, student))
    return pairs


def select(args) -> tuple[list[Pair], list[str]]:
    tables = list(paper.TABLE_PAIRS) if args.table == "all" else [args.table]
    pairs = parse_pairs(args.pairs) if args.pairs else [p for t in tables for p in paper.TABLE_PAIRS[t]]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(paper.PAPER_METHODS)
    unknown = [m for m in methods if m not in paper.METHODS_BY_KEY]
    if unknown:
        raise SweepError(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(paper.METHODS_BY_KEY)})")
    return list(dict.fromkeys(pairs)), list(dict.fromkeys(methods))


def runs_method(method: paper.Method, pair: Pair) -> bool:
    """Paper rows run on the pairs of their tables (FSP is not applicable across styles); other rows and
    pairs outside the paper run everywhere."""
    table = paper.table_of(pair)
    if table is None or not method.tables:
        return True
    return table in method.tables and not (method.row in ("FSP",) and paper.published(method.row, pair) is None)


def build_plan(args, routed: dict[str, list[str]], device: str | None) -> Plan:
    """The sweep's runs. ``device``: where they train ("cuda", "cpu"), or None when nothing is run (--report_only):
    the runs get --device cpu where the user asked for the CPU (--device cpu) or ``device`` is "cpu"."""
    pairs, methods = select(args)
    save_root = args.save_root
    cpu = args.device == "cpu" or device == "cpu"
    common = ["--save_root", save_root] + (["--device", "cpu"] if cpu else [])

    def seeded(trial: int) -> list[str]:
        return [] if args.seed_base is None else ["--seed", str(args.seed_base + trial)]

    runs: list[Run] = []
    teachers: dict[str, str] = {}
    teacher_runs: dict[str, str] = {}
    fetch: list[str] = []
    for teacher in dict.fromkeys(t for t, _ in pairs):
        if args.train_teachers:
            argv = ["--model", teacher, "--trial", str(TEACHER_TRIAL), *seeded(TEACHER_TRIAL), *common,
                    *routed[TEACHER_SCRIPT]]
            run = make_run(f"teacher {teacher}", "teacher", TEACHER_SCRIPT, argv, model=teacher, trial=TEACHER_TRIAL)
            runs.append(run)
            teacher_runs[teacher] = run.id
            teachers[teacher] = str(run.folder / f"{teacher}_last.pth") if run.folder else ""
        else:
            if teacher not in paper.TEACHERS:
                raise SweepError(f"no published checkpoint of teacher {teacher} (the paper's are "
                                 f"{', '.join(paper.TEACHERS)}): add --train_teachers to train it")
            teachers[teacher] = paper.fetched_teacher_path(teacher, save_root)
            if not Path(teachers[teacher]).is_file():
                fetch.append(teacher)
    for trial in range(1, args.trials + 1):
        for student in dict.fromkeys(s for _, s in pairs):
            argv = ["--model", student, "--trial", str(trial), *seeded(trial), *common, *routed[TEACHER_SCRIPT]]
            runs.append(make_run(f"vanilla {student} trial {trial}", "vanilla", TEACHER_SCRIPT, argv, model=student,
                                 trial=trial))
        for pair in pairs:
            for key in methods:
                method = paper.METHODS_BY_KEY[key]
                if not runs_method(method, pair):
                    continue
                argv = [*paper.distill_argv(method, pair, teachers[pair[0]], trial), "--model_t", pair[0],
                        *seeded(trial), *common, *routed[STUDENT_SCRIPT]]
                deps = [teacher_runs[pair[0]]] if pair[0] in teacher_runs else []
                runs.append(make_run(f"{key} {pair[0]}->{pair[1]} trial {trial}", "student", STUDENT_SCRIPT, argv,
                                     pair=pair, model=pair[1], method=key, trial=trial, deps=deps))
    return Plan(runs, teachers, fetch, pairs, methods, args.trials, device)


# ---- run state on disk --------------------------------------------------------------------------------------


def read_results(run: Run) -> dict | None:
    if run.folder is None:
        return None
    try:
        data = json.loads((run.folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_done(run: Run, results: dict | None = None) -> bool:
    """Finished with at least the epochs asked for (a run with more is not shortened)."""
    results = read_results(run) if results is None else results
    return bool(results and results.get("finished") and (results.get("epochs_done") or 0) >= run.epochs)


class RunLock:
    """An exclusive flock on '<run folder>.lock' beside the run folder, held while the run trains (its file
    descriptor is inherited by the training process, so the lock outlives a killed sweep until the run ends)."""

    def __init__(self, run: Run):
        self.path = run.folder.with_name(f".{run.folder.name}.lock")
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.uname().nodename} {os.getpid()}\n".encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def log_file(logs: Path, run_id: str) -> Path:
    """<save_root>/reproduce/logs/<run id>.log: the run's output (all its attempts)."""
    return logs / (re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id) + ".log")


def log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        text = path.read_bytes()[-64 * 1024:].decode(errors="replace")
    except OSError:
        return []
    # A live progress bar rewrites its line with carriage returns: keep each line's last state.
    kept = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    return [line for line in kept if line][-lines:]


# ---- resources and engines ------------------------------------------------------------------------------------


class _Prctl:
    """libc's prctl (None off Linux), looked up when this module is imported, so that a forked child calls it
    without loading anything (a dlopen between fork and exec can deadlock). A copy pickled to another process
    (the Ray task, when this file runs as __main__) looks it up again there: a ctypes pointer cannot travel."""

    def __init__(self):
        try:
            self.call = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            self.call = None

    def __reduce__(self):
        return _Prctl, ()


_PRCTL = _Prctl()
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """The preexec_fn of a training process (Linux): SIGTERM when ``parent_pid``, the process that started it,
    dies, so that a killed sweep does not leave runs training unwatched. A parent that died before the prctl
    (the child has another parent already) stops the child at once."""
    if _PRCTL.call is not None:
        _PRCTL.call(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def probe_gpus() -> list[dict]:
    """Free and total memory (MiB) of each visible GPU, measured in a child process so that this one holds no
    CUDA context."""
    import torch

    if not torch.cuda.is_available():
        return []
    code = ("import json, torch\n"
            "print(json.dumps([torch.cuda.mem_get_info(i) for i in range(torch.cuda.device_count())]"
            " if torch.cuda.is_available() else []))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        return [{"free_mb": free / 2**20, "total_mb": total / 2**20} for free, total in json.loads(out.stdout)]
    except (subprocess.SubprocessError, ValueError, OSError):
        return []


def default_runs_per_gpu(free_mb: float, run_mb: float) -> int:
    return max(1, min(MAX_RUNS_PER_GPU, int(free_mb * 0.85 // run_mb)))


class LocalEngine:
    """Worker processes on this machine: ``runs_per_gpu`` runs share each GPU (CUDA_VISIBLE_DEVICES), or
    ``runs_per_gpu`` runs share the CPU cores."""

    def __init__(self, gpus: list[dict], runs_per_gpu: int, threads: int):
        self.gpus, self.runs_per_gpu, self.threads = gpus, runs_per_gpu, threads
        self.capacity = runs_per_gpu * max(1, len(gpus))
        self.active: dict[str, tuple[subprocess.Popen, int | None]] = {}

    def describe(self) -> str:
        if self.gpus:
            return (f"local engine: {len(self.gpus)} GPU(s) x {self.runs_per_gpu} runs each, {self.threads} CPU "
                    f"thread(s) per run")
        return f"local engine: CPU, {self.runs_per_gpu} runs at once, {self.threads} thread(s) each"

    def placement(self) -> int | None:
        if not self.gpus:
            return None
        load = {i: 0 for i in range(len(self.gpus))}
        for _, gpu in self.active.values():
            load[gpu] += 1
        return min(load, key=load.get)

    def start(self, run: Run, env: dict[str, str], log: Path, lock: RunLock) -> str:
        gpu = self.placement()
        env = {**os.environ, **env}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self._visible(gpu)
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, *run.words()], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(lock.fd,),
                                    preexec_fn=functools.partial(_die_with_parent, os.getpid()))
        self.active[run.id] = (proc, gpu)
        return "cpu" if gpu is None else f"gpu{gpu}"

    @staticmethod
    def _visible(gpu: int) -> str:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            return visible.split(",")[gpu].strip()
        return str(gpu)

    def poll(self) -> list[tuple[str, int]]:
        done = [(run_id, proc.returncode) for run_id, (proc, _) in self.active.items() if proc.poll() is not None]
        for run_id, _ in done:
            del self.active[run_id]
        return done

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    STOP_TIMEOUT_S = 60.0  # then SIGKILL

    def stop(self) -> None:
        """SIGTERM: each run stops at once, its last epoch-end state kept (the next sweep resumes it)."""
        for proc, _ in self.active.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.STOP_TIMEOUT_S
        for proc, _ in self.active.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)  # so that poll() reports it: a run the sweep stopped (interrupted)


def _ray_train(command: list[str], cwd: str, env: dict[str, str], log: str) -> int:
    """A Ray task: one training run as a child process of the worker (on the node Ray chose; Ray has set
    CUDA_VISIBLE_DEVICES to the GPU it assigned)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, *command], cwd=cwd, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=functools.partial(_die_with_parent, os.getpid()))
        return proc.wait()


def _ray_gpu_memory_mb() -> float:
    import torch

    return torch.cuda.mem_get_info(0)[0] / 2**20


class RayEngine:
    """The same runs as Ray tasks on a cluster: each asks for 1/runs_per_gpu of a GPU (or ``threads`` CPUs).
    The project folder and --save_root must be at the same path on every node (a shared filesystem)."""

    def __init__(self, address: str | None, runs_per_gpu: int | None, threads: int, cpu_only: bool):
        try:
            import ray
        except ImportError:
            raise SweepError("--engine ray needs Ray, which is not installed: pip install 'ray>=2.9' "
                             "(or use the default --engine local)") from None
        self.ray = ray
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        resources = ray.cluster_resources()
        self.gpus = 0 if cpu_only else int(resources.get("GPU", 0))
        self.cpus = int(resources.get("CPU", 1))
        self.threads = threads
        if self.gpus:
            if runs_per_gpu is None:
                free = ray.get(ray.remote(num_gpus=1)(_ray_gpu_memory_mb).remote())
                runs_per_gpu = default_runs_per_gpu(free, run_memory_mb())
            self.runs_per_gpu = runs_per_gpu
            self.capacity = self.gpus * runs_per_gpu
            self.options = {"num_gpus": 1 / runs_per_gpu, "num_cpus": min(threads, max(1, self.cpus // self.capacity))}
        else:
            self.runs_per_gpu = runs_per_gpu or max(1, self.cpus // threads)
            self.capacity = self.runs_per_gpu
            self.options = {"num_gpus": 0, "num_cpus": max(1, min(threads, self.cpus))}
        self.task = ray.remote(max_retries=0)(_ray_train)
        self.active: dict[str, object] = {}

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"

    def describe(self) -> str:
        where = (f"{self.gpus} GPU(s) x {self.runs_per_gpu} runs each (num_gpus={self.options['num_gpus']:.3g})"
                 if self.gpus else f"CPU only, {self.capacity} runs at once")
        return f"ray engine: cluster of {self.cpus} CPUs, {where}"

    def start(self, run: Run, env: dict[str, str], log: Path, lock: RunLock) -> str:
        ref = self.task.options(**self.options).remote(run.words(), str(ROOT), env, str(log))
        self.active[run.id] = ref
        return "ray"

    def poll(self) -> list[tuple[str, int]]:
        if not self.active:
            return []
        ids = {ref: run_id for run_id, ref in self.active.items()}
        ready, _ = self.ray.wait(list(ids), num_returns=len(ids), timeout=0)
        done = []
        for ref in ready:
            try:
                rc = self.ray.get(ref)
            except Exception:  # the worker died (node lost, killed): the run stops; the next sweep resumes it
                rc = -1
            done.append((ids[ref], rc))
            del self.active[ids[ref]]
        return done

    def wait(self, seconds: float) -> None:
        if self.active:
            self.ray.wait(list(self.active.values()), num_returns=1, timeout=seconds)
        else:
            time.sleep(seconds)

    def stop(self) -> None:
        for ref in self.active.values():
            self.ray.cancel(ref, force=True)

    def shutdown(self) -> None:
        self.ray.shutdown()


def run_memory_mb() -> float:
    """Per-run GPU memory: the largest peak of the benchmark's CUDA step tables plus a CUDA context."""
    from scripts.reproduce_report import benchmark_sections

    peaks = [row["peak_memory_mb"] for section in benchmark_sections() if section["device"] == "cuda"
             for table in (section["results"].get("distill_step", {}),) for method in table.values()
             for row in method.values() if isinstance(row, dict) and "peak_memory_mb" in row]
    return max(peaks) + 600 if peaks else RUN_MEMORY_MB


# ---- the sweep ----------------------------------------------------------------------------------------------------


@dataclass
class State:
    status: str = "pending"  # pending, already finished (before this sweep), running, finished, failed, blocked,
    # elsewhere (another sweep holds its lock), interrupted
    where: str = ""
    started: float = 0.0
    tail: list[str] = field(default_factory=list)
    lock: RunLock | None = None
    measured: tuple[int, float] = (0, 0.0)  # (epochs, seconds) of a run finished by this sweep


class Sweep:
    """Schedules the plan's runs on an engine: dependencies first, one lock per run, failures contained."""

    POLL_S = 0.5
    ELSEWHERE_RECHECK_S = 5.0

    def __init__(self, plan: Plan, engine, report_dir: Path, threads: int, progress):
        self.plan, self.engine, self.report_dir, self.threads = plan, engine, report_dir, threads
        self.runs = plan.by_id()
        self.states = {run.id: State() for run in plan.runs}
        self.progress = progress
        self.logs = report_dir / "logs"
        self.last_elsewhere_check = 0.0

    def log_path(self, run: Run) -> Path:
        return log_file(self.logs, run.id)

    def env(self) -> dict[str, str]:
        threads = str(self.threads)
        return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}

    def initial_states(self) -> None:
        for run in self.plan.runs:
            state = self.states[run.id]
            if run.error is not None:
                state.status, state.tail = "failed", [run.error]
            elif is_done(run):
                state.status = "already finished"

    def ready(self, run: Run) -> bool | None:
        """True: can start; False: waits for a dependency; None: a dependency failed."""
        for dep in run.deps:
            status = self.states[dep].status
            if status in ("failed", "blocked", "interrupted"):
                return None
            if status not in ("already finished", "finished"):
                return False
        return True

    def fill(self) -> None:
        now = time.monotonic()
        recheck = now - self.last_elsewhere_check > self.ELSEWHERE_RECHECK_S
        if recheck:
            self.last_elsewhere_check = now
        for run in self.plan.runs:
            if len(self.engine.active) >= self.engine.capacity:
                return
            state = self.states[run.id]
            if state.status == "elsewhere" and recheck:
                state.status = "already finished" if is_done(run) else "pending"
                if state.status == "already finished":
                    self.progress.event(run, "finished by another sweep")
            if state.status != "pending":
                continue
            ready = self.ready(run)
            if ready is None:
                state.status = "blocked"
                state.tail = [f"not run: {', '.join(run.deps)} did not finish"]
                self.progress.event(run, f"blocked: {', '.join(run.deps)} did not finish")
                continue
            if not ready:
                continue
            lock = RunLock(run)
            if not lock.acquire():
                state.status = "elsewhere"
                self.progress.event(run, "running in another sweep: waiting for it")
                continue
            if is_done(run):  # finished by another sweep since we looked
                lock.release()
                state.status = "already finished"
                continue
            self.logs.mkdir(parents=True, exist_ok=True)
            state.lock, state.started = lock, time.time()
            state.where = self.engine.start(run, self.env(), self.log_path(run), lock)
            state.status = "running"
            self.progress.event(run, f"started on {state.where}")

    def finish(self, run_id: str, returncode: int, stopped: bool = False) -> None:
        """A run ended with ``returncode``; ``stopped``: the sweep stopped it (interrupt), whatever its exit
        status (SIGKILL after the grace time, a cancelled Ray task)."""
        run, state = self.runs[run_id], self.states[run_id]
        state.lock.release()
        state.lock = None
        results = read_results(run)
        if returncode == 0 and is_done(run, results):
            state.status, state.measured = "finished", epochs_done(run, results)
            self.progress.event(run, "finished")
        elif stopped or returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGTERM, -signal.SIGINT):
            state.status = "interrupted"
            self.progress.event(run, "interrupted (rerun the sweep to continue it)")
        else:
            state.status = "failed"
            state.tail = log_tail(self.log_path(run)) or [f"exit status {returncode}"]
            self.progress.event(run, f"FAILED (exit status {returncode}): {state.tail[-1]}")

    def unfinished(self) -> bool:
        return any(s.status in ("pending", "running", "elsewhere") for s in self.states.values())

    def loop(self) -> None:
        self.initial_states()
        self.progress.begin(self)
        while self.unfinished():
            self.fill()
            for run_id, returncode in self.engine.poll():
                self.finish(run_id, returncode)
            self.progress.tick(self)
            self.engine.wait(self.POLL_S)
        self.progress.end(self)

    def interrupt(self) -> None:
        """Stop the active runs: those that ended before are judged by their exit status, the others are
        interrupted (not failed), however the engine stopped them."""
        for run_id, returncode in self.engine.poll():
            self.finish(run_id, returncode)
        self.engine.stop()
        for run_id, returncode in self.engine.poll():
            self.finish(run_id, returncode, stopped=True)
        for run_id, state in self.states.items():
            if state.status == "running":
                state.status = "interrupted"
                if state.lock is not None:
                    state.lock.release()


# ---- progress ---------------------------------------------------------------------------------------------


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """A live block on a terminal (one line per active run and a total with the ETA, redrawn every second);
    plain lines otherwise (one per event, the total every minute)."""

    def __init__(self, stream=None, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.every_s = 1.0 if self.live else 60.0
        self.drawn = 0
        self.last_total = 0.0

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def clear(self) -> None:
        if self.live and self.drawn:
            self.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def event(self, run: Run, what: str) -> None:
        self.clear()
        self.write(f"[{time.strftime('%H:%M:%S')}] {run.id}: {what}\n")

    def begin(self, sweep: Sweep) -> None:
        counts = status_counts(sweep)
        self.write(f"{len(sweep.plan.runs)} runs: {counts.get('already finished', 0)} already finished, "
                   f"{counts.get('failed', 0)} refused by their script; {sweep.engine.describe()}\n")

    def tick(self, sweep: Sweep) -> None:
        now = time.monotonic()
        if now - self.last_total < self.every_s:
            return
        self.last_total = now
        if self.live:
            self.clear()
            width = shutil.get_terminal_size().columns - 1  # a wrapped line would break the redraw
            lines = [line[:width] for line in [*map(functools.partial(run_line, sweep), sweep.engine.active),
                                               total_line(sweep)]]
            self.write("\n".join(lines) + "\n")
            self.drawn = len(lines)
        else:
            self.write(f"[{time.strftime('%H:%M:%S')}] {total_line(sweep)}\n")

    def end(self, sweep: Sweep) -> None:
        self.clear()
        self.write(total_line(sweep) + "\n")


def status_counts(sweep: Sweep) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in sweep.states.values():
        counts[state.status] = counts.get(state.status, 0) + 1
    return counts


def epochs_of(run: Run) -> int:
    return run.epochs + run.init_epochs


def epochs_done(run: Run, results: dict | None) -> tuple[int, float]:
    """(epochs done, init stage included; wall seconds) from the run's results.json."""
    if not results:
        return 0, 0.0
    done = (results.get("epochs_done") or 0) + (results.get("init_epochs_done") or 0)
    return done, float(results.get("wall_time_s") or 0.0)


def run_line(sweep: Sweep, run_id: str) -> str:
    run, state = sweep.runs[run_id], sweep.states[run_id]
    done, seconds = epochs_done(run, read_results(run))
    if not done:
        return f"  {state.where:>5} {run.id}: starting ({fmt_duration(time.time() - state.started)})"
    per_epoch = seconds / done
    return (f"  {state.where:>5} {run.id}: epoch {done}/{epochs_of(run)}, {per_epoch:.1f} s/epoch, "
            f"ETA {fmt_duration(per_epoch * (epochs_of(run) - done))}")


def total_line(sweep: Sweep) -> str:
    """Runs and epochs done, and an ETA: remaining epochs at the measured mean epoch time, over the slots."""
    counts = status_counts(sweep)
    finished = counts.get("already finished", 0) + counts.get("finished", 0)
    total_epochs = done_epochs = remaining = 0
    measured_s = measured_epochs = 0.0
    for run in sweep.plan.runs:
        if run.error is not None:
            continue
        state = sweep.states[run.id]
        total_epochs += epochs_of(run)
        if state.status == "already finished":
            done_epochs += epochs_of(run)
            continue
        if state.status in ("running", "finished"):  # only this sweep's runs time this machine
            done, seconds = state.measured if state.status == "finished" else epochs_done(run, read_results(run))
            done = min(done, epochs_of(run))
            done_epochs += done
            measured_s, measured_epochs = measured_s + seconds, measured_epochs + done
            remaining += epochs_of(run) - done if state.status == "running" else 0
        elif state.status in ("pending", "elsewhere"):
            remaining += epochs_of(run)
    eta = (remaining * measured_s / measured_epochs / max(1, sweep.engine.capacity)) if measured_epochs else None
    parts = [f"runs {finished}/{len(sweep.plan.runs)} finished"]
    for status in ("running", "failed", "blocked", "elsewhere", "interrupted"):
        if counts.get(status):
            parts.append(f"{counts[status]} {status}")
    parts.append(f"epochs {done_epochs}/{total_epochs}")
    parts.append(f"ETA {fmt_duration(eta) if eta is not None else 'after the first epoch'}")
    return "total: " + ", ".join(parts)


# ---- fetching, data, and the command line -------------------------------------------------------------------


def fetch_teachers(archs: list[str], save_root: str) -> list[str]:
    """Download the paper's teachers (scripts/fetch_pretrained_teachers.sh); returns those that failed."""
    if not archs:
        return []
    print(f"==> fetching the paper's teachers: {', '.join(archs)}", flush=True)
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "scripts" / "fetch_pretrained_teachers.sh"), "--dest",
                    str(Path(save_root) / "models"), *archs], env=env, check=False)
    return [arch for arch in archs if not Path(paper.fetched_teacher_path(arch, save_root)).is_file()]


def prepare_data(routed: dict[str, list[str]]) -> None:
    """Download CIFAR-100 once, before the runs would all try at the same time."""
    opt, _ = parse_run(TEACHER_SCRIPT, ["--model", "resnet8", *routed[TEACHER_SCRIPT]])
    if opt is None or opt.dataset != "cifar100":
        return
    from dataset import DatasetError, ensure_cifar100

    try:
        ensure_cifar100(opt.data_folder, download=True)
    except DatasetError as e:
        raise SweepError(f"CIFAR-100 is not in --data_folder {opt.data_folder} and cannot be downloaded: "
                         f"{str(e).splitlines()[0]}") from None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/reproduce.py", description=__doc__.split("\n\n")[0], allow_abbrev=False,  # --seed is a run's
        epilog="Every other flag goes to each training script that accepts it (teacher and student runs), e.g. "
               "--epochs 240 --amp --channels_last --data_folder ./data --nce_k 4096. Methods: "
               + ", ".join(paper.METHODS_BY_KEY) + ".")
    parser.add_argument("--table", choices=["same", "cross", "all"], default="all",
                        help="the paper's Table 1 (same architecture style), Table 2 (cross), or both")
    parser.add_argument("--pairs", default=None, metavar="T:S,...",
                        help="teacher:student pairs instead of the table's (e.g. resnet56:resnet20)")
    parser.add_argument("--methods", default=None, metavar="M,...",
                        help=f"methods (default: the paper's, {','.join(paper.PAPER_METHODS)})")
    parser.add_argument("--trials", type=int, default=3, help="runs per cell (trials 1..N)")
    parser.add_argument("--train_teachers", action="store_true",
                        help="train the teachers (train_teacher.py --trial 0) instead of fetching the paper's")
    parser.add_argument("--save_root", default="./save", help="the runs' --save_root; the report goes to "
                                                              "<save_root>/reproduce/")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: worker processes on this machine; ray: tasks on a Ray cluster")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, a cluster "
                                                        "started on this machine, or a new local one)")
    parser.add_argument("--runs_per_gpu", type=int, default=None,
                        help="runs sharing one GPU (default: from free GPU memory, at most "
                             f"{MAX_RUNS_PER_GPU}); on the CPU: runs at once (default: cores / 4)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: cores / runs)")
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto",
                        help="cpu: run everything on the CPU even where there are GPUs")
    parser.add_argument("--seed_base", type=int, default=None,
                        help="seed every run with SEED_BASE + trial (default: each run draws and records one)")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the plan, its order, the packing and the estimated device-hours; run nothing")
    parser.add_argument("--report_only", action="store_true", help="only rewrite the report from the runs on disk")
    return parser


def parse_args(argv: list[str] | None):
    parser = get_args_parser()
    args, extra = parser.parse_known_args(argv)
    if args.trials < 1:
        raise SweepError(f"--trials must be at least 1, got {args.trials}")
    if args.runs_per_gpu is not None and args.runs_per_gpu < 1:
        raise SweepError(f"--runs_per_gpu must be at least 1, got {args.runs_per_gpu}")
    if args.threads is not None and args.threads < 1:
        raise SweepError(f"--threads must be at least 1, got {args.threads}")
    if args.address and args.engine != "ray":
        raise SweepError("--address is for --engine ray")
    return args, extra


def make_local_engine(args) -> LocalEngine:
    cores = os.cpu_count() or 1
    gpus = [] if args.device == "cpu" else probe_gpus()
    if gpus:
        runs = args.runs_per_gpu or min(default_runs_per_gpu(g["free_mb"], run_memory_mb()) for g in gpus)
        threads = args.threads or max(1, cores // (runs * len(gpus)))
    else:
        runs = args.runs_per_gpu or max(1, cores // 4)
        threads = args.threads or max(1, cores // runs)
    return LocalEngine(gpus, runs, threads)


def _raise_keyboard_interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    from scripts import reproduce_report as report

    args, extra = parse_args(argv)
    routed = route_flags(extra)
    report_dir = Path(args.save_root) / REPORT_FOLDER
    if args.report_only:
        print(report.write(build_plan(args, routed, None), None, report_dir))  # not the machine's device
        return 0
    if args.engine == "ray" and not args.dry_run:
        engine = RayEngine(args.address, args.runs_per_gpu, args.threads or 1, cpu_only=args.device == "cpu")
        device = engine.device
    else:
        engine = make_local_engine(args)
        device = "cuda" if engine.gpus else "cpu"
    plan = build_plan(args, routed, device)
    if args.dry_run:
        print(report.dry_run(plan, engine, routed))
        if args.engine == "ray":
            print("note: the packing above is this machine's; under --engine ray the cluster's GPUs set it at start")
        return 0

    prepare_data(routed)
    needed = {run.pair[0] for run in plan.runs if run.kind == "student" and run.folder and not is_done(run)}
    missing = fetch_teachers([arch for arch in plan.fetch if arch in needed], args.save_root)
    sweep = Sweep(plan, engine, report_dir, engine.threads, Progress())
    for run in plan.runs:
        if run.kind == "student" and run.pair[0] in missing:
            sweep.states[run.id].status = "blocked"
            sweep.states[run.id].tail = [f"teacher {run.pair[0]} could not be fetched (see above); or pass "
                                         f"--train_teachers"]
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    interrupted = False
    try:
        sweep.loop()
    except KeyboardInterrupt:
        interrupted = True
        print("\n==> interrupted: stopping the active runs (their last epoch is saved)", file=sys.stderr)
        sweep.interrupt()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if isinstance(engine, RayEngine):
            engine.shutdown()
    summary = report.write(plan, sweep, report_dir)
    print(summary)
    if interrupted:
        print(f"==> rerun the same command to finish the sweep: "
              f"{shlex.join(['python', 'scripts/reproduce.py', *(sys.argv[1:] if argv is None else argv)])}")
        return 130
    return 1 if any(s.status in ("failed", "blocked") for s in sweep.states.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
