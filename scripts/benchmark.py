"""Benchmarks, written to BENCHMARKS.md and benchmarks.json at the repository root.

    python scripts/benchmark.py [--quick] [--sections data ...] [--num_workers 2] [--device cpu]

One function per section returns a `Section` (markdown body + numbers); register it in SECTIONS. Running
a subset of sections keeps the last results of the others: both files are rebuilt from the merged JSON.
--quick uses tiny sizes (for CI; pass --output_dir to keep the real report untouched).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import itertools
import json
import math
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train_student  # noqa: E402
import train_teacher  # noqa: E402
from cli.build import maybe_compile, to_channels_last  # noqa: E402
from crd.criterion import _PositiveMinusSoftplus  # noqa: E402
from crd.memory import ContrastMemory, _gathered_scores, _TransposedBank, _WholeBankScores  # noqa: E402
from dataset import build_loaders  # noqa: E402
from dataset.batch import Batch  # noqa: E402
from dataset.fast import derived_generator  # noqa: E402
from dataset.sampling import (ContrastSampler, distinct_by_first_draws, distinct_by_random_keys,  # noqa: E402
                              spare_draws)
from dataset.synthetic import write_synthetic_cifar100  # noqa: E402
from distiller_zoo import DISTILLERS, DistillKL, build_distiller  # noqa: E402
from helper.engine import make_optimizer  # noqa: E402
from helper.loops import amp_dtype, grad_scaler, train_epoch  # noqa: E402
from helper.objectives import DistillObjective, TeacherObjective  # noqa: E402
from helper.util import accuracy, seed_everything  # noqa: E402
from models import imagenet_model_dict, model_dict  # noqa: E402


@dataclass
class Section:
    title: str
    markdown: str
    results: dict[str, Any] = field(default_factory=dict)
    key: str | None = None  # its entry in the report (default: the section's name)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"CPU: {model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], int], device: torch.device) -> tuple[int, float]:
    """(items processed, seconds) of one call."""
    synchronize(device)
    start = time.perf_counter()
    items = work()
    synchronize(device)
    return items, time.perf_counter() - start


def count_images(batches: Iterable) -> int:
    return sum(len(batch) for batch in batches)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def original_crd_sampler(labels: np.ndarray, k: int, anchors: np.ndarray) -> None:
    """The original CIFAR100InstanceSample.__getitem__ sampling, one anchor at a time (exact mode)."""
    cls_positive = [np.flatnonzero(labels == c) for c in range(100)]
    cls_negative = [np.concatenate([cls_positive[j] for j in range(100) if j != c]) for c in range(100)]
    for index in anchors:
        target = labels[index]
        replace = k > len(cls_negative[target])
        neg_idx = np.random.choice(cls_negative[target], k, replace=replace)
        np.hstack((np.asarray([index]), neg_idx))


def loader_throughput(folder: str, backend: str, crd_k: int | None, batch_size: int, num_workers: int,
                      device: torch.device) -> float:
    """Images/s of one full training epoch (augmentation, normalisation and CRD sampling included)."""
    on = device if backend == "tensor" else torch.device("cpu")
    train, _, _ = build_loaders(folder, backend, batch_size, num_workers, on, instance=True, crd_k=crd_k)
    if backend == "tensor":
        count_images(batch for _, batch in zip(range(3), train))  # warm-up (allocator, kernels)
    images, seconds = timed(lambda: count_images(train), on)
    return images / seconds


def sampler_throughput(labels: np.ndarray, k: int, batch_size: int, device: torch.device) -> dict[str, float]:
    """Samples/s over one epoch of anchors: the original per-sample sampler (CPU), ContrastSampler on
    `device`, its batched (accelerator) kernel when `device` is a CPU, and, as the ceiling of any CPU sampler
    that draws k numbers per anchor, numpy drawing k bounded integers per anchor and nothing else."""
    anchors = np.random.default_rng(0).permutation(len(labels))
    cpu = torch.device("cpu")
    _, baseline_seconds = timed(lambda: original_crd_sampler(labels, k, anchors), cpu)
    device_labels = torch.from_numpy(labels).to(device)
    sampler = ContrastSampler(device_labels, k)
    generator = derived_generator(device, 0)
    batches = torch.from_numpy(anchors).to(device).split(batch_size)
    kernels = {"sample": sampler.sample}
    if device.type == "cpu":
        kernels["batched"] = sampler._sample_batched  # exact mode: the positives are the anchors
    rates = {"original": len(labels) / baseline_seconds}
    for name, kernel in kernels.items():
        kernel(batches[0], device_labels[batches[0]], generator)  # warm-up
        _, seconds = timed(lambda: sum(len(kernel(b, device_labels[b], generator)) for b in batches), device)
        rates[name] = len(labels) / seconds
    rng, pool = np.random.default_rng(0), len(labels) - len(labels) // 100
    _, seconds = timed(lambda: sum(len(rng.integers(0, pool, (len(b), k))) for b in batches), cpu)
    rates["draws_only"] = len(labels) / seconds
    return rates


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:.1f}x ({'meets' if ratio >= target else 'below'} the {target:g}x target)"


def data_section(args: argparse.Namespace) -> Section:
    """Train-loader throughput of both paths and CRD sampling throughput against the original sampler."""
    per_class, k, batch_size = (5, 128, 64) if args.quick else (500, 16384, 64)
    n = 100 * per_class
    device = torch.device(args.device)
    pipelines = {
        "torchvision (PIL, DataLoader)": ("torchvision", None),
        "tensor (on device)": ("tensor", None),
        f"torchvision + CRD sampling (k={k})": ("torchvision", k),
        f"tensor + CRD sampling (k={k})": ("tensor", k),
    }
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic_cifar100(folder, train_per_class=per_class, test_per_class=1, seed=0)
        speeds = {name: loader_throughput(folder, backend, crd_k, batch_size, args.num_workers, device)
                  for name, (backend, crd_k) in pipelines.items()}
    rates = sampler_throughput(np.repeat(np.arange(100), per_class), k, batch_size, device)
    baseline_rate, sampler_rate = rates["original"], rates["sample"]
    names = list(pipelines)
    fast_ratio, crd_fast_ratio = speeds[names[1]] / speeds[names[0]], speeds[names[3]] / speeds[names[2]]
    crd_ratio = sampler_rate / baseline_rate
    batch_bytes = batch_size * (k + 1) * 8
    sampler_rows = [["original: np.random.choice(pool, k, replace=False) per sample (CPU, one process)",
                     f"{baseline_rate:,.0f}", "1.0x"],
                    [f"ContrastSampler.sample, batch {batch_size} ({device.type})", f"{sampler_rate:,.0f}",
                     f"{crd_ratio:.1f}x"]]
    if "batched" in rates:
        sampler_rows.append([f"the batched accelerator kernel (random keys + topk) run on the CPU, batch {batch_size}",
                             f"{rates['batched']:,.0f}", f"{rates['batched'] / baseline_rate:.1f}x"])
    sampler_rows.append([f"ceiling: numpy drawing k={k} bounded integers per anchor, nothing else (CPU)",
                         f"{rates['draws_only']:,.0f}", f"{rates['draws_only'] / baseline_rate:.1f}x"])
    markdown = "\n\n".join([
        f"Synthetic CIFAR-100 set of {n:,} train images, batch {batch_size}, one full epoch each "
        f"(torchvision path: --num_workers {args.num_workers}, workers started per epoch as in the original; "
        f"tensor path on {device.type}). CRD: k={k}, exact mode, {n:,} anchors.",
        "**Train loaders (augmentation + normalisation included), images/s**\n\n"
        + table(["pipeline", "images/s"], [[name, f"{speed:,.0f}"] for name, speed in speeds.items()]),
        f"Tensor path vs torchvision path: {verdict(fast_ratio, 20)}; with CRD sampling: {crd_fast_ratio:.1f}x.",
        "**CRD contrast-index sampling, samples/s**\n\n" + table(["sampler", "samples/s", "speed-up"], sampler_rows),
        f"CRD sampling vs the original per-sample sampler: {verdict(crd_ratio, 50)}. Each batch writes "
        f"{batch_size} x {k + 1} int64 indices ({batch_bytes / 1e6:.1f} MB); 50x the original would mean "
        f"{1e3 * batch_size / (50 * baseline_rate):.2f} ms per batch. "
        + (f"On a CPU that is out of reach for a numpy sampler here: numpy's bounded-integer generator alone, "
           f"drawing the k numbers a uniform k-subset needs and doing nothing else, reaches "
           f"{rates['draws_only'] / baseline_rate:.1f}x, and numpy's partial shuffle holds the GIL, so threads "
           f"do not add to it. The original's cost is a permutation of the whole pool per sample; this "
           f"project's CPU kernel shuffles only k positions and gathers them straight into the batch."
           if device.type == "cpu" else ""),
    ])
    results = {
        "train_images": n, "batch_size": batch_size, "crd_k": k, "num_workers": args.num_workers,
        "tensor_device": str(device), "loader_images_per_s": speeds, "tensor_vs_torchvision": fast_ratio,
        "tensor_vs_torchvision_with_crd": crd_fast_ratio, "crd_original_samples_per_s": baseline_rate,
        "crd_sampler_samples_per_s": sampler_rate, "crd_speedup": crd_ratio, "crd_sampler_rates": rates,
    }
    return Section("Data loading", markdown, results)


METHODS = list(DISTILLERS)
WHOLE_STEP_METHODS = ("kd", "crd")  # without and with CRD's contrast sampling in the data path
WHOLE_STEP_TARGET = 1.3  # CPU target: fast path >= 1.3x the faithful path's images/s
BENCH_LR = "1e-5"  # steps repeat one batch, which some methods (CC, VID) blow up at lr 0.05; costs are the same
# Dense tensor-core peaks (FLOP/s) from NVIDIA's datasheets; float32 convolutions run as TF32 (cuDNN default).
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "tf32": 494e12},
    "H100 NVL": {"bf16": 835e12, "tf32": 418e12},
    "H100 PCIe": {"bf16": 756e12, "tf32": 378e12},
    "H100": {"bf16": 989e12, "tf32": 494e12},  # SXM
}


@dataclass
class Config:
    """One combination of the speed flags of train_*.py."""

    label: str
    amp: bool = False
    channels_last: bool = False
    compile: str | None = None


class RepeatBatch:
    """The same device-resident batch ``steps`` times: the training step alone, no data path."""

    def __init__(self, batch, steps: int):
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return itertools.repeat(self.batch, self.steps)


class Batches:
    """The next ``n`` batches of an already started loader iterator (worker start-up stays untimed)."""

    def __init__(self, iterator, n: int):
        self.iterator, self.n = iterator, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return itertools.islice(self.iterator, self.n)


def speed_configs(args: argparse.Namespace, device: torch.device) -> list[Config]:
    amp = f"amp ({str(amp_dtype(device)).removeprefix('torch.')})"
    configs = [Config("fp32"), Config("channels_last", channels_last=True), Config(amp, amp=True),
               Config(f"channels_last + {amp}", amp=True, channels_last=True)]
    if args.compile:
        modes = ["default", "reduce-overhead"] if device.type == "cuda" else ["default"]  # CUDA graphs: CUDA only
        configs += [Config(f"channels_last + {amp} + compile" + ("" if mode == "default" else f" {mode}"),
                           amp=True, channels_last=True, compile=mode) for mode in modes]
    return configs


def reset_peak_memory(device: torch.device) -> float:
    """Start a new peak-memory window; returns the memory in use now (MB): allocated on CUDA, RSS on a CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2 ** 20
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak RSS (VmHWM) that getrusage reports
        Path("/proc/self/clear_refs").write_text("5")
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * resource.getpagesize() / 2 ** 20
    return peak_memory_mb(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max_memory_allocated; CPU: the process's peak RSS since reset_peak_memory (Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def forward_flops(model: torch.nn.Module, batch_size: int, device: torch.device) -> float:
    """Forward FLOPs per image (FlopCounterMode: convolutions and matrix products, 2 per multiply-add)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(batch_size, 3, 32, 32, device=device))
    model.train(was_training)
    return counter.get_total_flops() / batch_size


def peak_flops(device: torch.device, amp: bool) -> float | None:
    """The device's dense peak for the step's precision, None when unknown (every CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS.items():
        if all(word in name for word in key.split()):
            return peaks["bf16" if amp else "tf32"]
    return None


def student_options(args: argparse.Namespace, method: str, config: Config, n_data: int, crd_k: int):
    """train_student.py's own options for ``method`` (its defaults, the pair, the config's flags)."""
    weights = ["-a", "0.9", "-b", "0"] if method == "kd" else ["-a", "0", "-b", "1"]
    opt = train_student.parse_option([
        "--path_t", f"{args.teacher}_vanilla/unused.pth", "--model_t", args.teacher, "--model_s", args.student,
        "--distill", method, *weights, "--batch_size", str(args.batch_size), "--device", args.device,
        "--seed", "0", "--nce_k", str(crd_k), "--print_freq", str(10 ** 9), "--learning_rate", BENCH_LR])
    opt.n_data, opt.amp, opt.channels_last, opt.compile = n_data, config.amp, config.channels_last, config.compile
    return opt


def teacher_options(args: argparse.Namespace, config: Config):
    opt = train_teacher.parse_option(["--model", args.teacher, "--batch_size", str(args.batch_size),
                                      "--device", args.device, "--seed", "0", "--print_freq", str(10 ** 9),
                                      "--learning_rate", BENCH_LR])
    opt.amp, opt.channels_last, opt.compile = config.amp, config.channels_last, config.compile
    return opt


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Set BatchNorm running statistics from ``images``: an untrained network keeps 0/1 ones, with which a
    deep teacher's eval-mode activations grow layer after layer (CC's term reaches 1e8 and diverges)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average: one batch gives its exact statistics
    model.train()
    model(images)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def fresh(model: torch.nn.Module) -> torch.nn.Module:
    """A copy, so that one config's channels_last conversion or updates do not leak into the next."""
    return copy.deepcopy(model)


Runner = Callable[[Iterable], int]  # runs training steps on some batches, returns the image count


def project_loop(opt, objective, optimizer, device: torch.device) -> Runner:
    """This project's train_epoch with ``objective`` (the flags in ``opt``)."""
    scaler = grad_scaler(device, opt.amp)
    return lambda batches: train_epoch(1, batches, objective, optimizer, opt, device, scaler=scaler).images


def original_loop(model_s, model_t, distiller, opt, optimizer) -> Runner:
    """One iteration of the original train_distill/train_vanilla: features always built, float32,
    contiguous tensors, the per-parameter SGD loop, and a host sync per step (``loss.item()``)."""
    kl = DistillKL(opt.kd_T) if model_t is not None else None
    device = torch.device(opt.device)

    def step(batch) -> int:
        batch = batch.to(device)
        if model_t is None:
            logit_s = model_s(batch.images)
            loss = F.cross_entropy(logit_s, batch.labels)
        else:
            # The original builds the feature lists for every method.
            feat_s, logit_s = model_s(batch.images, is_feat=True, preact=distiller.student_preact)
            with torch.no_grad():
                feat_t, logit_t = model_t(batch.images, is_feat=True, preact=distiller.teacher_preact)
            term = distiller(feat_s, feat_t, logit_s, logit_t, batch)
            loss = (opt.gamma * F.cross_entropy(logit_s, batch.labels) + opt.alpha * kl(logit_s, logit_t)
                    + opt.beta * term)
        acc1, acc5 = accuracy(logit_s, batch.labels, topk=(1, 5))
        loss.item(), acc1.item(), acc5.item()  # the original's meters take Python floats
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
        return len(batch)

    return lambda batches: sum(step(batch) for batch in batches)


def original_sgd(params, opt) -> torch.optim.SGD:
    """The original's optimizer with its per-parameter update loop (torch would pick foreach on CUDA)."""
    return torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum, weight_decay=opt.weight_decay,
                           foreach=False)


def distill_runner(args, method: str, config: Config | None, teacher, student, n_data: int, crd_k: int,
                   device: torch.device) -> Runner:
    """Distillation steps of ``method`` on fresh model copies: the original loop when ``config`` is None."""
    opt = student_options(args, method, config or Config("fp32"), n_data, crd_k)
    model_t, model_s = fresh(teacher).eval(), fresh(student)
    distiller = build_distiller(opt, model_s, model_t).to(device)
    params = [p for module in [model_s, *distiller.trainable_modules()] for p in module.parameters()]
    if config is None:
        model_s.train(), distiller.train()
        return original_loop(model_s, model_t, distiller, opt, original_sgd(params, opt))
    to_channels_last(opt, model_s, model_t)
    objective = DistillObjective(maybe_compile(opt, model_s), maybe_compile(opt, model_t), distiller, opt)
    return project_loop(opt, objective, make_optimizer(params, opt.learning_rate, opt), device)


def teacher_runner(args, config: Config | None, teacher, device: torch.device) -> Runner:
    """Teacher training steps (train_teacher.py) on a fresh copy: the original loop when ``config`` is None."""
    opt = teacher_options(args, config or Config("fp32"))
    model = fresh(teacher).train()
    if config is None:
        return original_loop(model, None, None, opt, original_sgd(model.parameters(), opt))
    to_channels_last(opt, model)
    optimizer = make_optimizer(model.parameters(), opt.learning_rate, opt)
    return project_loop(opt, TeacherObjective(maybe_compile(opt, model)), optimizer, device)


def measure_rows(runners: dict[str, Runner], batch_source: Callable[[int], Iterable], warmup: int, steps: int,
                 device: torch.device) -> dict[str, dict[str, float]]:
    """{label: images/s and peak memory} after ``warmup`` untimed steps of every runner. CUDA: ``steps``
    steps per row timed together (a sync per step would hide the host/device overlap). CPU: single steps
    taken round-robin over the rows, the fastest kept per row (as timeit does: other processes on a shared
    machine only ever slow a step down, and round-robin spreads their bursts over every row)."""
    for run in runners.values():
        run(batch_source(warmup))
    rates: dict[str, list[float]] = {label: [] for label in runners}
    peaks, growths = dict.fromkeys(runners, 0.0), dict.fromkeys(runners, 0.0)
    rounds, per_round = (1, steps) if device.type == "cuda" else (steps, 1)
    for _ in range(rounds):
        for label, run in runners.items():
            in_use = reset_peak_memory(device)
            images, seconds = timed(lambda: run(batch_source(per_round)), device)
            rates[label].append(images / seconds)
            peak = peak_memory_mb(device)
            peaks[label], growths[label] = max(peaks[label], peak), max(growths[label], peak - in_use)
    return {label: {"images_per_s": max(rates[label]), "peak_memory_mb": peaks[label],
                    "peak_growth_mb": growths[label]} for label in runners}


def synthetic_batch(batch_size: int, n_data: int, crd_k: int, device: torch.device):
    """A normalised-looking random batch with dataset indices and CRD contrast indices (exact mode)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n_data) % 100
    indices = torch.randperm(n_data, generator=generator)[:batch_size]
    sampler = ContrastSampler(labels.to(device), crd_k)
    contrast_idx = sampler.sample(indices.to(device), labels[indices].to(device), derived_generator(device, 0))
    return Batch(torch.randn(batch_size, 3, 32, 32, generator=generator), labels[indices], indices,
                 contrast_idx).to(device)


FAITHFUL = "faithful"  # the original step (result key; the tables say "faithful (original step)")


def memory_cell(row: dict[str, float]) -> str:
    return f"{row['peak_memory_mb']:,.0f} (+{row['peak_growth_mb']:,.0f})"


def step_achieved(flops_per_image: float, rate: float, peak: float | None) -> str:
    achieved = flops_per_image * rate
    share = "unknown peak" if peak is None else f"{100 * achieved / peak:.1f}% of peak"
    return f"{achieved / 1e9:,.1f} GFLOP/s ({share})"


def method_step_results(args, method: str, configs: list[Config], measure_steps, teacher, student, n_data: int,
                        crd_k: int, device: torch.device) -> dict[str, Any]:
    """One method's rows: the original step, then each config, and which config was fastest."""
    try:
        runners = {FAITHFUL if config is None else config.label:
                   distill_runner(args, method, config, teacher, student, n_data, crd_k, device)
                   for config in [None, *configs]}
    except (ValueError, NotImplementedError) as e:  # e.g. FSP/KDSVD between different widths
        return {"unsupported": str(e).split(";")[0]}
    results: dict[str, Any] = measure_steps(runners)
    results["best"] = max(configs, key=lambda c: results[c.label]["images_per_s"]).label
    return results


def teacher_table(configs: list[Config], results: dict, flops_t: float, device: torch.device) -> str:
    base = results[FAITHFUL]["images_per_s"]
    rows = []
    for config in [None, *configs]:
        row = results[FAITHFUL if config is None else config.label]
        rate = row["images_per_s"]
        rows.append([f"{FAITHFUL} (original step)" if config is None else config.label, f"{rate:,.1f}",
                     f"{rate / base:.2f}x", memory_cell(row),
                     step_achieved(3 * flops_t, rate, peak_flops(device, config is not None and config.amp))])
    return table(["config", "images/s", "vs faithful", "peak MB (step's own)", "achieved"], rows)


def method_table(configs: list[Config], method_results: dict, flops_t: float, flops_s: float,
                 device: torch.device) -> str:
    labels = [FAITHFUL] + [c.label for c in configs]
    header = ["method", *labels, "best vs faithful", "peak MB (step's own), best", "achieved (best)"]
    rows = []
    for method, results in method_results.items():
        if "unsupported" in results:
            rows.append([method] + ["n/a"] * (len(header) - 1))
            continue
        best = next(c for c in configs if c.label == results["best"])
        best_row, base = results[best.label], results[FAITHFUL]["images_per_s"]
        rows.append([method] + [f"{results[label]['images_per_s']:,.1f}" for label in labels]
                    + [f"{best_row['images_per_s'] / base:.2f}x", memory_cell(best_row),
                       step_achieved(flops_t + 3 * flops_s, best_row["images_per_s"], peak_flops(device, best.amp))])
    return table(header, rows)


def steps_section(args: argparse.Namespace) -> Section:
    """Teacher training step and every method's distillation step with each speed flag, against the
    original step, plus the whole step (data path included) of the faithful and the fast path."""
    args = step_options(args)
    device = torch.device(args.device)
    seed_everything(0, deterministic=False)
    per_class, crd_k = (5, 128) if args.quick else (200, 16384)
    bank_n = 500 if args.quick else 50000  # the CRD memory bank of the step-only runs: CIFAR-100's size
    teacher = model_dict[args.teacher](num_classes=100).to(device)
    student = model_dict[args.student](num_classes=100).to(device)
    flops_t, flops_s = (forward_flops(m, args.batch_size, device) for m in (teacher, student))
    configs = speed_configs(args, device)
    batch = synthetic_batch(args.batch_size, bank_n, crd_k, device)
    calibrate_batchnorm(teacher, batch.images)  # the frozen teacher, as if trained
    measure_steps = functools.partial(measure_rows, batch_source=functools.partial(RepeatBatch, batch),
                                      warmup=args.warmup, steps=args.steps, device=device)
    teacher_results = measure_steps({FAITHFUL if config is None else config.label:
                                     teacher_runner(args, config, teacher, device) for config in [None, *configs]})
    method_results = {method: method_step_results(args, method, configs, measure_steps, teacher, student, bank_n,
                                                  crd_k, device)
                      for method in args.methods}
    whole_results = whole_step_comparison(args, method_results, teacher, student, per_class, crd_k, device)
    memory_kind = ("max_memory_allocated" if device.type == "cuda" else "peak RSS of the process, reset per row")
    memory_kind += (", with (+) its growth during the step: the models of every row of a table stay resident, "
                    "and on a CPU memory freed earlier in the process stays in the RSS")
    timing = "timed together" if device.type == "cuda" else "single steps round-robin over the rows, the fastest kept"
    markdown = "\n\n".join([
        f"Teacher **{args.teacher}**, student **{args.student}**, batch {args.batch_size}, {device.type}; "
        f"{args.warmup} warm-up and {args.steps} timed steps per row ({timing}; the same device-resident batch, "
        f"so the data path is excluded; learning rate {BENCH_LR} so that no method diverges on it). "
        f"*{FAITHFUL}* = the original step: feature lists always built, float32, per-parameter SGD, a "
        f"`loss.item()` host sync per step. The other columns run this project's `train_epoch` with the named "
        f"flags (foreach/fused SGD, meters on the device, no feature lists for KD). Peak memory: {memory_kind}. "
        f"CRD: k={crd_k}, memory bank of {bank_n:,} rows.",
        table(["model", "forward GFLOPs / image"], [[args.teacher, f"{flops_t / 1e9:.3f}"],
                                                     [args.student, f"{flops_s / 1e9:.3f}"]]),
        f"**Teacher training step ({args.teacher}, train_teacher.py), images/s** — achieved FLOP/s counts "
        f"3x the forward FLOPs (forward + backward)\n\n" + teacher_table(configs, teacher_results, flops_t, device),
        "**Distillation step (train_student.py), images/s** — achieved FLOP/s counts teacher forward + 3x "
        "student forward\n\n" + method_table(configs, method_results, flops_t, flops_s, device),
        f"**Whole distillation step, data path included, images/s** — faithful path: torchvision backend "
        f"(PIL, DataLoader, --num_workers {args.num_workers}) + the original step; fast path: tensor backend + "
        f"train_epoch with the method's fastest config above. Synthetic CIFAR-100 of {100 * per_class:,} train "
        f"images.\n\n" + whole_step_table(whole_results, device),
        what_bounds_the_step(device, flops_t, flops_s, method_results, whole_results),
    ])
    results = {
        "teacher": args.teacher, "student": args.student, "batch_size": args.batch_size, "device": str(device),
        "warmup_steps": args.warmup, "timed_steps": args.steps, "crd_k": crd_k, "crd_bank_rows": bank_n,
        "forward_flops_per_image": {"teacher": flops_t, "student": flops_s},
        "peak_flops": {"amp": peak_flops(device, True), "fp32": peak_flops(device, False)},
        "teacher_step": teacher_results, "distill_step": method_results, "whole_step": whole_results,
    }
    with_compile = " with torch.compile" if args.compile else ""
    return Section(f"Training steps: {args.teacher} -> {args.student}{with_compile}", markdown, results,
                   key=f"steps {args.teacher}->{args.student}{' compile' if args.compile else ''}")


def data_and_whole_step(args, backend: str, method: str, config: Config | None, teacher, student, folder: str,
                        crd_k: int | None, device: torch.device) -> tuple[float, float]:
    """(images/s of the loader alone, images/s of loader + step) for one backend, on one started iterator."""
    on = device if backend == "tensor" else torch.device("cpu")  # the torchvision path yields CPU batches
    train, _, n_data = build_loaders(folder, backend, args.batch_size, args.num_workers, on, instance=True,
                                     crd_k=crd_k)
    iterator = iter(train)
    count_images(Batches(iterator, args.warmup))  # worker start-up, allocator
    batches = max(4 * args.steps, 8)  # more than the DataLoader's prefetched batches
    images, seconds = timed(lambda: count_images(Batches(iterator, batches)), on)
    run = distill_runner(args, method, config, teacher, student, n_data, crd_k or 1, device)
    row = measure_rows({backend: run}, functools.partial(Batches, iterator), args.warmup, args.steps, device)
    return images / seconds, row[backend]["images_per_s"]


def whole_step_comparison(args, method_results: dict, teacher, student, per_class: int, crd_k: int,
                          device: torch.device) -> dict[str, dict[str, Any]]:
    """Data path alone and data path + step: faithful (torchvision + original step) vs fast (tensor backend +
    the method's fastest config)."""
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic_cifar100(folder, train_per_class=per_class, test_per_class=1, seed=0)
        for method in (m for m in WHOLE_STEP_METHODS if "best" in method_results.get(m, {})):
            k = DISTILLERS[method].data_needs(student_options(args, method, Config("fp32"), 0, crd_k)).contrast_k
            best = next(c for c in speed_configs(args, device) if c.label == method_results[method]["best"])
            data_faithful, faithful = data_and_whole_step(args, "torchvision", method, None, teacher, student,
                                                          folder, k, device)
            data_fast, fast = data_and_whole_step(args, "tensor", method, best, teacher, student, folder, k, device)
            results[method] = {"faithful_data_images_per_s": data_faithful, "faithful_images_per_s": faithful,
                               "fast_data_images_per_s": data_fast, "fast_images_per_s": fast,
                               "fast_config": best.label, "speedup": fast / faithful, "train_images": 100 * per_class}
    return results


def whole_step_table(results: dict, device: torch.device) -> str:
    rows = []
    for method, r in results.items():
        speedup = verdict(r["speedup"], WHOLE_STEP_TARGET) if device.type == "cpu" else f"{r['speedup']:.1f}x"
        rows.append([method, f"{r['faithful_data_images_per_s']:,.0f}", f"{r['faithful_images_per_s']:,.1f}",
                     f"{r['fast_data_images_per_s']:,.0f}", f"{r['fast_images_per_s']:,.1f} ({r['fast_config']})",
                     speedup])
    return table(["method", "faithful: data alone", "faithful: data + step", "fast: data alone",
                  "fast: data + step (config)", "speed-up"], rows)


def what_bounds_the_step(device: torch.device, flops_t: float, flops_s: float, method_results: dict,
                         whole_results: dict) -> str:
    """A short paragraph read off the numbers above."""
    parts = [f"**What bounds the step.** Per image the step does {flops_t / 1e9:.2f} GFLOPs of teacher forward "
             f"and {3 * flops_s / 1e9:.2f} GFLOPs of student forward + backward, so the frozen teacher is "
             f"{100 * flops_t / (flops_t + 3 * flops_s):.0f}% of the arithmetic."]
    kd = method_results.get("kd", {})
    if "best" in kd:
        base, fp32, best = (kd[label]["images_per_s"] for label in (FAITHFUL, "fp32", kd["best"]))
        parts.append(f"For KD, this project's step in float32 runs at {fp32 / base:.2f}x the original step "
                     f"and the fastest flags ({kd['best']}) at {best / base:.2f}x.")
    for method, r in whole_results.items():
        parts.append(f"With {method}, the fast data path alone delivers {r['fast_data_images_per_s']:,.0f} "
                     f"images/s, so it takes about {100 * r['fast_images_per_s'] / r['fast_data_images_per_s']:.0f}% "
                     f"of the fast step's time.")
    if device.type == "cpu":
        parts.append(f"So the CPU step is bound by the convolution kernels (oneDNN, {torch.get_num_threads()} "
                     f"thread(s)): the original's feature lists and per-step `loss.item()` cost nothing measurable "
                     f"without an accelerator queue, and the gains come from bf16 arithmetic (AVX-512 BF16 where "
                     f"the CPU has it) and channels_last convolutions. CRD's contrast sampling is the largest data "
                     f"cost, still small next to the convolutions. No peak FLOP/s is tabulated for CPUs, so no "
                     f"fraction of peak is given. With more threads than free cores (other jobs on the machine), "
                     f"OpenMP threads wait for descheduled siblings and steps slow down up to 10x: `--threads 1` "
                     f"keeps shared-machine numbers reproducible.")
    else:
        parts.append("On a GPU at this batch size the small CIFAR networks leave most of the device idle: the "
                     "step is bound by kernel launches and per-op overhead rather than by FLOPs (see the "
                     "fraction of peak), which torch.compile (fused kernels) and CUDA graphs "
                     "(--compile reduce-overhead) remove; larger batches raise the fraction.")
    return " ".join(parts)


def step_options(args: argparse.Namespace) -> argparse.Namespace:
    """The steps section's sizes: tiny under --quick, longer timing runs on a GPU."""
    quick, cuda = args.quick, torch.device(args.device).type == "cuda"
    return argparse.Namespace(**{
        **vars(args),
        "teacher": args.teacher or ("resnet14" if quick else "resnet32x4"),  # quick: equal widths (FSP, KDSVD)
        "student": args.student or ("resnet8" if quick else "resnet8x4"),
        "batch_size": args.batch_size or (8 if quick else 64),
        "warmup": args.warmup if args.warmup is not None else (5 if cuda and not quick else 1),
        "steps": args.steps or (1 if quick else 20 if cuda else 3),
    })


CRD_FEAT_DIM = 128  # D, CRD's --feat_dim
CRD_TEMPERATURE, CRD_MOMENTUM = 0.07, 0.5  # --nce_t, --nce_m
# (B, K, n) of the scoring table; the first is the paper's (batch 64, 16384 negatives, CIFAR-100's 50,000 rows).
CRD_ROWS = [(64, 16384, 50000), (64, 4096, 50000), (8, 16384, 50000), (64, 16384, 500000), (16, 1024, 50000)]
CRD_QUICK_ROWS = [(8, 255, 1000), (2, 63, 1000)]  # one row on each side of scores_whole_bank's rule
CRD_BANK_ROWS = {"CIFAR-100": 50000, "ImageNet": 1281167}  # n of the memory figures (computed, not measured)
WHOLE, GATHERED = "whole bank", "gathered"


def call_times(works: dict[str, Callable[[], int]], warmup: int, repeats: int,
               device: torch.device) -> dict[str, dict[str, float]]:
    """{label: fastest and median ms of one call} after ``warmup`` untimed calls of each; the timed calls go
    round-robin over the labels, so that another process's burst slows every label alike."""
    for work in works.values():
        for _ in range(warmup):
            work()
    seconds: dict[str, list[float]] = {label: [] for label in works}
    for _ in range(repeats):
        for label, work in works.items():
            seconds[label].append(timed(work, device)[1])
    return {label: {"ms": 1e3 * min(s), "median_ms": 1e3 * float(np.median(s))} for label, s in seconds.items()}


def bank_scoring_works(batch_size: int, k: int, n: int, device: torch.device) -> dict[str, Callable[[], int]]:
    """Forward + backward of one bank's (B, K+1) scores by each strategy of ContrastMemory.log_scores, with its
    own buffers. The whole-bank path scores memory_v1, the gathered path memory_v2 (a copy of it): a write by
    the gathered path would put memory_v1's (D, n) copy out of step, which training with one strategy never does."""
    memory = ContrastMemory(CRD_FEAT_DIM, n, k, CRD_TEMPERATURE, CRD_MOMENTUM).to(device)
    memory.memory_v2.copy_(memory.memory_v1)
    generator = torch.Generator().manual_seed(0)
    y = torch.randperm(n, generator=generator)[:batch_size].to(device)
    idx = torch.randint(0, n, (batch_size, k + 1), generator=generator).to(device)  # uniform, as the alias draw
    idx[:, 0] = y
    v = F.normalize(torch.randn(batch_size, CRD_FEAT_DIM, generator=generator), dim=1).to(device)
    new_rows = memory._updated_rows(memory.memory_v1, v, y, CRD_MOMENTUM)
    v = (v / CRD_TEMPERATURE).requires_grad_()  # log_scores scales the (B, D) embedding by 1 / T
    grad = torch.randn(batch_size, k + 1, generator=generator).to(device)  # (B, K+1) upstream gradient
    scratch = memory._scratch(batch_size, device)
    transposed = memory._transposed.setdefault("memory_v1", _TransposedBank())

    def whole_bank() -> int:
        transposed.sync(memory.memory_v1)  # as log_scores does per call: a no-op while in step
        scores = _WholeBankScores.apply(v, memory.memory_v1, idx, y, new_rows, scratch, transposed)
        torch.autograd.grad(scores, v, grad)
        return batch_size

    def gathered() -> int:
        torch.autograd.grad(_gathered_scores(v, memory.memory_v2, idx, y, new_rows), v, grad)
        return batch_size

    return {WHOLE: whole_bank, GATHERED: gathered}


def bank_layout_works(batch_size: int, n: int, device: torch.device) -> dict[str, Callable[[], int]]:
    """The whole-bank forward matmul (B, D) x (D, n) into the (B, n) scratch, from the (n, D) bank read
    transposed and from the (D, n) copy _TransposedBank keeps."""
    generator = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(n, CRD_FEAT_DIM, generator=generator), dim=1).to(device)
    v = torch.randn(batch_size, CRD_FEAT_DIM, generator=generator).to(device)
    transposed, scratch = _TransposedBank(), torch.empty(batch_size, n, device=device)
    transposed.sync(bank)
    return {"(n, D) bank read transposed": lambda: torch.mm(v, bank.t(), out=scratch).shape[0],
            "(D, n) copy": lambda: torch.mm(v, transposed.transposed, out=scratch).shape[0]}


def nce_sum_works(batch_size: int, k: int, n: int, device: torch.device) -> dict[str, Callable[[], int]]:
    """Forward + backward of sum_b s[b, 0] - sum_{b,k} softplus(s[b, k]) over (B, K+1) scores, by
    _PositiveMinusSoftplus (ContrastLoss.from_log) and by autograd through F.softplus."""
    generator = torch.Generator().manual_seed(0)
    # <random unit vectors> / T (std 1 / (sqrt(D) T)), as the scores of untrained embeddings
    logits = (torch.randn(batch_size, k + 1, generator=generator) / (CRD_FEAT_DIM ** 0.5 * CRD_TEMPERATURE))
    # log Z + log(K Pn), with Z set from these scores as _set_normalization does
    offset = math.log(logits.exp().mean().item() * n) + math.log(k / n)
    logits = logits.to(device).requires_grad_()

    def fused() -> int:
        torch.autograd.grad(_PositiveMinusSoftplus.apply(logits, offset), logits)
        return batch_size

    def softplus() -> int:
        s = logits - offset
        torch.autograd.grad(s[:, 0].sum() - F.softplus(s).sum(), logits)
        return batch_size

    return {"_PositiveMinusSoftplus": fused, "autograd through F.softplus": softplus}


KEYS, FIRST_DRAWS = "random keys over the pool", "first distinct draws"


def sampler_kernel_works(rows: int, k: int, pool: int, device: torch.device) -> dict[str, Callable[[], int]]:
    """The two kernels for k distinct positions of [0, pool) per row (dataset/sampling.py)."""
    bounds, generator = torch.full((rows,), pool, device=device), derived_generator(device, 0)
    extra = spare_draws(k, pool)
    return {KEYS: lambda: distinct_by_random_keys(bounds, k, pool, generator).shape[0],
            FIRST_DRAWS: lambda: distinct_by_first_draws(bounds, k, extra, generator).shape[0]}


def rule_picks(batch_size: int, k: int, n: int) -> str:
    """The strategy ContrastMemory.scores_whole_bank picks (the rule reads only the bank's row count nLem, so
    no ImageNet-sized bank is allocated to ask it)."""
    return WHOLE if ContrastMemory.scores_whole_bank(SimpleNamespace(nLem=n), batch_size, k) else GATHERED


def bank_memory_bytes(n: int, batch_size: int, k: int) -> dict[str, int | str]:
    """ContrastMemory's float32 buffers at n rows (D = CRD_FEAT_DIM), and what each scoring strategy adds at
    batch B with K negatives: the whole-bank path a (D, n) copy per bank and one (B, n) scratch; the gathered
    path the (B, K+1, D) rows of each bank, held from the forward to the backward."""
    bank = n * CRD_FEAT_DIM * 4
    return {"n": n, "bank_bytes": bank, "both_banks_bytes": 2 * bank,
            "whole_bank_extra_bytes": 2 * bank + batch_size * n * 4,
            "gathered_extra_bytes": 2 * batch_size * (k + 1) * CRD_FEAT_DIM * 4,
            "rule_picks": rule_picks(batch_size, k, n)}


def crd_options(args: argparse.Namespace) -> argparse.Namespace:
    """The crd section's repetitions (--warmup, --steps): calls per kernel; fewer under --quick."""
    cuda = torch.device(args.device).type == "cuda"
    return argparse.Namespace(**{
        **vars(args),
        "warmup": args.warmup if args.warmup is not None else (1 if args.quick else 5 if cuda else 2),
        "steps": args.steps or (1 if args.quick else 20 if cuda else 7),
    })


def megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:,.1f} MB"


def crd_section(args: argparse.Namespace) -> Section:
    """CRD's memory-bank kernels: the two strategies for scoring the sampled rows, the bank's layout for the
    whole-bank matmul, and the fused NCE sum against autograd through softplus; plus the banks' memory."""
    args = crd_options(args)
    device = torch.device(args.device)
    rows = CRD_QUICK_ROWS if args.quick else CRD_ROWS
    measure = functools.partial(call_times, warmup=args.warmup, repeats=args.steps, device=device)
    scoring = []
    for batch_size, k, n in rows:
        times = measure(bank_scoring_works(batch_size, k, n, device))  # the row's banks go (1.4 GB at n=500k)
        faster = min(times, key=lambda label: times[label]["ms"])
        scoring.append({"batch_size": batch_size, "k": k, "n": n, "ms": times, "faster": faster,
                        "rule_picks": rule_picks(batch_size, k, n),
                        "gathered_over_whole": times[GATHERED]["ms"] / times[WHOLE]["ms"]})
    batch_size, k, n = rows[0]
    layout = measure(bank_layout_works(batch_size, n, device))
    nce = measure(nce_sum_works(batch_size, k, n, device))
    imagenet_n, sampling_rows = CRD_BANK_ROWS["ImageNet"], 2 if args.quick else 8
    sampling = measure(sampler_kernel_works(sampling_rows, k, imagenet_n - imagenet_n // 1000, device))
    paper_batch, paper_k, _ = CRD_ROWS[0]  # the memory figures are computed: the paper's sizes even under --quick
    memory_rows = {name: bank_memory_bytes(rows_n, paper_batch, paper_k) for name, rows_n in CRD_BANK_ROWS.items()}

    def ms(entry: dict[str, float]) -> str:
        return f"{entry['ms']:,.1f}" if entry["ms"] >= 10 else f"{entry['ms']:.2f}"

    scoring_table = table(
        ["B, K, n", "whole bank: one (B, n) matmul, ms", "gathered (B, K+1, D) rows, ms", "gathered / whole",
         "rule picks", "faster"],
        [[f"{r['batch_size']}, {r['k']}, {r['n']:,}" + (" (the paper's)" if i == 0 and not args.quick else ""),
          ms(r["ms"][WHOLE]), ms(r["ms"][GATHERED]), f"{r['gathered_over_whole']:.1f}x", r["rule_picks"],
          r["faster"]] for i, r in enumerate(scoring)])
    (read_label, read), (copy_label, copied) = layout.items()
    (fused_label, fused), (softplus_label, softplus) = nce.items()
    memory_table = table(
        ["bank rows n", "one (n, D) bank", "both banks", f"whole-bank path adds ((D, n) copies, ({paper_batch}, n) "
         "scratch)", f"gathered path adds (({paper_batch}, {paper_k + 1}, D) rows of both banks)",
         f"rule picks at B={paper_batch}, K={paper_k}"],
        [[f"{m['n']:,} ({name})", megabytes(m["bank_bytes"]), megabytes(m["both_banks_bytes"]),
          megabytes(m["whole_bank_extra_bytes"]), megabytes(m["gathered_extra_bytes"]), m["rule_picks"]]
         for name, m in memory_rows.items()])
    timing = "the fastest of" if device.type == "cpu" else "the fastest single call (synchronised) of"
    markdown = "\n\n".join([
        f"float32, D = {CRD_FEAT_DIM}, {device.type}. Each figure: {timing} {args.steps} calls after "
        f"{args.warmup} warm-up calls, taken round-robin over the kernels of a row (medians in benchmarks.json). "
        f"The kernels are crd/memory.py's and crd/criterion.py's own, called on one bank as "
        f"`ContrastMemory.log_scores` calls them.",
        f"**Scoring the (B, K+1) sampled rows of one bank**, forward + backward "
        f"(`ContrastMemory.scores_whole_bank` picks the strategy: whole bank when B (K+1) >= n)\n\n"
        + scoring_table,
        f"**Layout of the bank for the whole-bank matmul** (({batch_size}, {CRD_FEAT_DIM}) x ({CRD_FEAT_DIM}, "
        f"{n:,}), forward only): the {read_label} {ms(read)} ms, the {copy_label} `_TransposedBank` keeps "
        f"{ms(copied)} ms ({read['ms'] / copied['ms']:.2f}x).",
        f"**The NCE sum** (({batch_size}, {k + 1}) scores, forward + backward): `{fused_label}` {ms(fused)} ms, "
        f"{softplus_label} {ms(softplus)} ms ({fused['ms'] / softplus['ms']:.2f} of its time).",
        f"**Drawing {k} distinct negatives from an ImageNet-sized pool** ({imagenet_n - imagenet_n // 1000:,} rows, "
        f"the batched sampler the GPU runs; per row): "
        + ", ".join(f"{label} {entry['ms'] / sampling_rows:.2f} ms" for label, entry in sampling.items())
        + f" ({sampling[KEYS]['ms'] / sampling[FIRST_DRAWS]['ms']:.1f}x). `ContrastSampler` takes the first distinct "
        f"draws wherever the pool is more than 4x the draws they need (ImageNet), random keys otherwise (CIFAR-100).",
        f"**Memory of the banks** (computed, float32, D = {CRD_FEAT_DIM}; ContrastMemory keeps one bank per "
        f"view)\n\n" + memory_table,
    ])
    results = {
        "feat_dim": CRD_FEAT_DIM, "device": str(device), "warmup_calls": args.warmup, "timed_calls": args.steps,
        "scoring": scoring, "layout": {"batch_size": batch_size, "n": n, "ms": layout},
        "nce_sum": {"batch_size": batch_size, "k": k, "ms": nce}, "memory": memory_rows,
        "imagenet_sampling": {"rows": sampling_rows, "k": k, "pool": imagenet_n - imagenet_n // 1000, "ms": sampling},
    }
    return Section("CRD memory kernels", markdown, results)


# The logit methods with the authors' CIFAR-100 weights (README's method table); KD is the reference row.
LOGIT_METHODS = {
    "KD": ["--distill", "kd", "-r", "0.1", "-a", "0.9", "-b", "0"],
    "KD+LS": ["--distill", "kd", "-r", "0.1", "-a", "9", "-b", "0", "--kd_T", "2", "--logit_stand"],
    "DKD": ["--distill", "dkd", "-r", "1", "-a", "0", "-b", "1"],
    "DKD+LS": ["--distill", "dkd", "-r", "1", "-a", "0", "-b", "1", "--logit_stand", "--dkd_T", "2",
               "--dkd_alpha", "9", "--dkd_beta", "72"],
    "DIST": ["--distill", "dist", "-r", "1", "-a", "0", "-b", "2"],
}
LOGIT_PAIRS = ["resnet32x4->resnet8x4", "resnet56->resnet20"]  # steps sections whose KD step the cost is set against


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched (forward and backward): on a GPU each is at least one kernel launch."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def logit_objective_work(flags: list[str], batch_size: int, classes: int, device: torch.device
                         ) -> Callable[[], int]:
    """Forward + backward of DistillObjective with ``flags`` on fixed logits: student and teacher are one
    (C, C) linear layer each on a (B, C) input, so everything but the loss (the networks' convolutions, the
    optimizer) is the same for every method and the differences between rows are the losses' own cost."""
    opt = train_student.parse_option(["--path_t", "resnet8_vanilla/unused.pth", "--model_s", "resnet8",
                                      "--batch_size", str(batch_size), "--device", str(device), *flags])
    generator = torch.Generator().manual_seed(0)
    model_s, model_t = (torch.nn.Linear(classes, classes).to(device) for _ in range(2))
    model_t.requires_grad_(False)
    distiller = DISTILLERS[opt.distill](opt, [], []).to(device)
    objective = DistillObjective(model_s, model_t, distiller, opt)
    objective.begin_epoch(100)  # past DKD's warm-up
    batch = Batch(torch.randn(batch_size, classes, generator=generator).mul_(3).to(device),
                  torch.randint(0, classes, (batch_size,), generator=generator).to(device))

    def work() -> int:
        objective(batch).loss.backward()
        return batch_size

    return work


def logit_section(args: argparse.Namespace) -> Section:
    """What DKD, DIST and logit standardisation add to a distillation step over KD: their loss's forward +
    backward on (B, 100) logits, set against KD's whole step from the steps sections, plus the aten op count
    (kernel launches on a GPU)."""
    args = crd_options(args)  # the same repetition defaults: calls per row
    device = torch.device(args.device)
    batch_size, classes = (8 if args.quick else 64), 100
    works = {label: logit_objective_work(flags, batch_size, classes, device)
             for label, flags in LOGIT_METHODS.items()}
    repeats = args.steps if args.quick else max(args.steps, 200)  # sub-millisecond calls: many of them
    times = call_times(works, warmup=args.warmup, repeats=repeats, device=device)
    ops = {}
    for label, work in works.items():
        with _OpCounter() as counter:
            work()
        ops[label] = counter.ops
    sections = {}
    json_path = args.output_dir / "benchmarks.json"
    if json_path.exists():
        sections = json.loads(json_path.read_text())["sections"]
    kd_steps = {}  # pair -> ms of KD's fastest whole step at the steps section's batch
    for pair in LOGIT_PAIRS:
        kd = sections.get(f"steps {pair}", {}).get("results", {})
        rows = kd.get("distill_step", {}).get("kd", {})
        rates = [row["images_per_s"] for row in rows.values() if isinstance(row, dict) and "images_per_s" in row]
        if rates and kd.get("device") == str(device) and kd.get("batch_size") == batch_size:
            kd_steps[pair] = 1e3 * batch_size / max(rates)
    reference = times["KD"]["ms"]
    rows, results = [], {}
    for label in LOGIT_METHODS:
        extra = times[label]["ms"] - reference
        shares = {pair: 100 * extra / step for pair, step in kd_steps.items()}
        results[label] = {"ms": times[label]["ms"], "median_ms": times[label]["median_ms"], "extra_ms": extra,
                          "aten_ops": ops[label], "extra_percent_of_kd_step": shares}
        rows.append([label, f"`{' '.join(LOGIT_METHODS[label])}`",
                     f"{times[label]['ms']:.3f}", "-" if label == "KD" else f"{extra:+.3f}",
                     *(("-" if label == "KD" else f"{shares[pair]:+.2f}%") for pair in kd_steps),
                     str(ops[label]), "-" if label == "KD" else f"{ops[label] - ops['KD']:+d}"])
    header = ["method", "flags", "objective fwd+bwd, ms", "over KD, ms",
              *(f"over KD's fastest {pair} step" for pair in kd_steps), "aten ops (fwd+bwd)", "over KD"]
    worst = max((r for label, r in results.items() if label != "KD"),
                key=lambda r: r["extra_ms"])
    worst_share = max(worst["extra_percent_of_kd_step"].values(), default=None)
    missing = "" if kd_steps else (" No steps section of this device and batch is in benchmarks.json, so the "
                                   "costs are not set against a whole step.")
    markdown = "\n\n".join([
        f"Batch {batch_size}, {classes} classes, {device.type}. Each row is `DistillObjective` (the loop's loss: "
        f"CE, the KL term, the method's term) with the method's flags, forward + backward, on fixed logits: student "
        f"and teacher are one {classes}x{classes} linear layer each, so the networks' cost is left out and what "
        f"differs between rows is the loss. Fastest of {repeats} calls after {args.warmup} warm-up calls, "
        f"round-robin over the rows (medians in benchmarks.json). Every other part of the step (the two networks, "
        f"the student's backward from its logits, the optimizer) is the same for these methods, so *over KD* is "
        f"what each adds to a step; the step columns set it against KD's fastest whole step of the steps "
        f"sections (same device and batch).{missing}",
        table(header, rows),
        (f"Largest addition: {max(results, key=lambda label: results[label]['extra_ms'])} with "
         f"{worst['extra_ms']:+.3f} ms per step"
         + (f", {worst_share:+.2f}% of KD's step: within the 5% budget." if worst_share is not None
            and worst_share <= 5 else f", {worst_share:+.2f}% of KD's step." if worst_share is not None else ".")
         + " On a GPU a step of a small CIFAR student is launch-bound: each extra aten op is at least one kernel "
           "launch (a few microseconds), which CUDA graphs (`--compile reduce-overhead`) remove."),
    ])
    return Section("Logit losses: DKD, DIST and LS against KD", markdown,
                   {"batch_size": batch_size, "classes": classes, "device": str(device), "repeats": repeats,
                    "warmup_calls": args.warmup, "kd_step_ms": kd_steps, "methods": results})


IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 training set
IMAGENET_PAIR = ("ResNet34", "ResNet18")
# Fractions of the bf16 dense peak a ResNet step may reach (BatchNorm and ReLU make it bandwidth-bound), and
# the CPU cores of typical 8-GPU machines: the assumptions of the 8-GPU estimate, until a GPU run measures it.
GPU_UTILISATIONS = (0.05, 0.1, 0.2)
SERVER_CORES = (64, 128)


def imagefolder_throughput(folder: str, backend: str, size: int, batch_size: int, num_workers: int) -> dict:
    """Images/s of the training loader (decode, RandomResizedCrop, flip, normalise) and of the validation loader
    (resize, center crop), from the first batch of a pass to its end (the workers' start-up, once an epoch on
    ImageNet, is left out)."""
    train, test, _ = build_loaders(folder, backend, batch_size, num_workers, "cpu", instance=True, dataset="imagenet",
                                   image_size=size)
    rates = {}
    for name, loader in (("train", train), ("val", test)):
        batches = iter(loader)
        next(batches)
        images, seconds = timed(lambda: count_images(batches), torch.device("cpu"))
        rates[f"{name}_images_per_s"] = images / seconds
    return rates


def imagenet_step_ms(method: str, size: int, batch_size: int, n_data: int, crd_k: int, steps: int,
                     device: torch.device) -> dict:
    """The fastest of ``steps`` timed ResNet34 -> ResNet18 steps (after one untimed), in ms, and the method's
    buffers (CRD: its two memory banks) in MB."""
    weights = ["-r", "0.5", "-a", "0.5", "-b", "0", "--kd_T", "1"] if method == "kd" else ["-a", "0", "-b", "0.8"]
    opt = train_student.parse_option([
        "--dataset", "imagenet", "--path_t", "unused.pth", "--model_t", IMAGENET_PAIR[0], "--model_s",
        IMAGENET_PAIR[1], "--distill", method, *weights, "--batch_size", str(batch_size), "--image_size", str(size),
        "--nce_k", str(crd_k), "--device", str(device), "--seed", "0", "--print_freq", str(10 ** 9),
        "--learning_rate", BENCH_LR])
    opt.n_data = n_data
    teacher = imagenet_model_dict[IMAGENET_PAIR[0]]().to(device).eval()
    student = imagenet_model_dict[IMAGENET_PAIR[1]]().to(device)
    distiller = build_distiller(opt, student, teacher)
    objective = DistillObjective(student, teacher, distiller, opt)
    params = list(student.parameters()) + [p for m in distiller.trainable_modules() for p in m.parameters()]
    optimizer = make_optimizer(params, opt.learning_rate, opt)
    batch = synthetic_batch(batch_size, n_data, crd_k, device)
    batch.images = torch.randn(batch_size, 3, size, size, device=device)
    batch.labels = batch.labels % 1000
    times = []
    for step in range(steps + 1):
        _, seconds = timed(lambda: train_epoch(1, [batch], objective, optimizer, opt, device).images, device)
        times.append(seconds)
    buffers = sum(b.numel() * b.element_size() for b in distiller.buffers())
    return {"step_ms": 1000 * min(times[1:]), "method_buffers_mb": buffers / 2 ** 20}


def imagenet_flops_per_image(size: int) -> float:
    """Training FLOPs per image of the pair: teacher forward + student forward and backward (2x forward)."""
    total = 0.0
    for name, passes in zip(IMAGENET_PAIR, (1, 3)):
        model = imagenet_model_dict[name]().eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.randn(1, 3, size, size))
        total += passes * counter.get_total_flops()
    return total


def imagenet_section(args: argparse.Namespace) -> Section:
    """ImageNet (--dataset imagenet): ImageFolder (and DALI) loader images/s on this CPU, ResNet34 -> ResNet18
    KD and CRD steps on ``--device`` with the full-size CRD banks, and an 8-GPU epoch estimate."""
    from dataset.synthetic_imagenet import write_synthetic_imagefolder

    quick = args.quick
    size = 64 if quick else 224
    device = torch.device(args.device)
    data_batch, step_batch = (8, 2) if quick else (64, 16 if device.type == "cpu" else 256)
    n_data, crd_k = (2000, 64) if quick else (IMAGENET_TRAIN_IMAGES, 16384)
    steps = args.steps or (1 if quick else 3)
    backends = ["torchvision"]
    try:
        import nvidia.dali  # noqa: F401
        backends.append("dali")
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as folder:
        # ImageNet-like JPEGs: 300..500 pixels a side (ImageNet's average is about 400x350)
        write_synthetic_imagefolder(folder, classes=10, train_per_class=4 if quick else 50,
                                    val_per_class=2 if quick else 10, min_size=80 if quick else 300,
                                    max_size=120 if quick else 500)
        data = {backend: imagefolder_throughput(folder, backend, size, data_batch, args.num_workers)
                for backend in backends}
    step = {method: imagenet_step_ms(method, size, step_batch, n_data, crd_k, steps, device)
            for method in ("kd", "crd")}
    flops = imagenet_flops_per_image(size)
    peak = PEAK_FLOPS["H100"]["bf16"]
    compute_epoch_s = {u: IMAGENET_TRAIN_IMAGES * flops / (8 * u * peak) for u in GPU_UTILISATIONS}
    per_worker = data["torchvision"]["train_images_per_s"] / max(args.num_workers, 1)
    data_epoch_s = {cores: IMAGENET_TRAIN_IMAGES / (cores * per_worker) for cores in SERVER_CORES}
    estimate_rows = [[f"compute: {u:.0%} of 8 H100s' bf16 peak", f"{8 * u * peak / flops:,.0f}",
                      f"{seconds / 60:,.1f}", f"{100 * seconds / 3600:,.1f}"] for u, seconds in compute_epoch_s.items()]
    estimate_rows += [[f"ImageFolder decoding on {cores} cores at this CPU's rate", f"{cores * per_worker:,.0f}",
                       f"{seconds / 60:,.1f}", f"{100 * seconds / 3600:,.1f}"]
                      for cores, seconds in data_epoch_s.items()]
    data_rows = [[backend + (" (CPU mode)" if backend == "dali" else ""), f"{r['train_images_per_s']:,.0f}",
                  f"{r['val_images_per_s']:,.0f}"] for backend, r in data.items()]
    step_rows = [[method.upper(), f"{r['step_ms']:,.0f}", f"{step_batch * 1000 / r['step_ms']:,.1f}",
                  f"{r['method_buffers_mb']:,.0f}"] for method, r in step.items()]
    markdown = "\n\n".join([
        f"Synthetic ImageNet-like JPEGs ({'80-120' if quick else '300-500'} pixels a side), crops of {size}, batch "
        f"{data_batch}, {args.num_workers} DataLoader worker(s) / DALI threads; each pass is timed from its "
        f"first batch (the workers' start-up left out).",
        table(["loader", "train images/s", "val images/s"], data_rows),
        ("DALI is not installed here: only the ImageFolder path is measured. " if "dali" not in data else
         "DALI's CPU mode decodes with libjpeg-turbo like PIL; its point is the GPU decoder (`mixed`), which "
         "only a GPU run measures. ")
        + f"Per worker the ImageFolder path decodes and augments about {per_worker:,.0f} images/s on this CPU.",
        f"ResNet34 -> ResNet18 on {device_description(device)}, batch {step_batch} at {size}x{size}, float32, "
        f"the fastest of {steps} steps; CRD with --nce_k {crd_k} against banks of {n_data:,} rows x 128.",
        table(["method", "step ms", "images/s", "method buffers MB"], step_rows),
        f"**8-GPU epoch estimate** (not measured: no GPU yet). A training image costs {flops / 1e9:.1f} GFLOPs "
        f"(teacher forward + student forward and backward; H100 bf16 dense peak {peak / 1e12:.0f} TFLOP/s). The "
        f"epoch of {IMAGENET_TRAIN_IMAGES:,} images takes the longer of the two bounds below: the GPUs' arithmetic "
        f"at an assumed fraction of peak, and JPEG decoding by the ImageFolder path at the per-worker rate "
        f"measured above on the machine's cores.",
        table(["bound", "images/s", "epoch minutes", "100 epochs, hours"], estimate_rows),
        f"So with the ImageFolder path the 8 GPUs wait for the CPUs unless the machine has about "
        f"{8 * GPU_UTILISATIONS[0] * peak / flops / per_worker:,.0f} cores of this speed (for the lowest "
        f"utilisation above): the reason for the DALI path, which decodes on the GPUs. CRD's banks "
        f"({step['crd']['method_buffers_mb']:,.0f} MB here) sit on every GPU.",
    ])
    return Section("ImageNet: data, ResNet34 -> ResNet18 steps, 8-GPU estimate", markdown,
                   {"image_size": size, "data_batch": data_batch, "step_batch": step_batch, "n_data": n_data,
                    "nce_k": crd_k, "data": data, "steps": step, "flops_per_image": flops,
                    "compute_bound_epoch_s": {str(u): v for u, v in compute_epoch_s.items()},
                    "decode_bound_epoch_s": {str(c): v for c, v in data_epoch_s.items()}})


SECTIONS: dict[str, Callable[[argparse.Namespace], Section]] = {
    "data": data_section,
    "steps": steps_section,
    "crd": crd_section,
    "logit": logit_section,
    "imagenet": imagenet_section,
}


def environment(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_description(torch.device(args.device)),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": shlex.join(["python", "scripts/benchmark.py", *argv]),
        "quick": args.quick,
        "load_average": round(os.getloadavg()[0], 2),  # other processes skew CPU timings
    }


def render(report: dict[str, Any]) -> str:
    parts = ["# Benchmarks", "Generated by `scripts/benchmark.py`; each section records how it was run."]
    for name, section in report["sections"].items():
        env = section["environment"]
        parts.append(f"## {section['title']} (`{name}`)")
        parts.append(f"{env['date']} · {env['device']} · torch {env['torch']} · python {env['python']} · "
                     f"1-min load average {env['load_average']} at start, {env['load_average_end']} at end"
                     f"{' · QUICK (tiny sizes)' if env['quick'] else ''}\n\nCommand: `{env['command']}`")
        parts.append(section["markdown"])
    return "\n\n".join(parts) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader workers of the torchvision path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); on a CPU shared with other jobs, 1 "
                             "avoids OpenMP threads stalling on a descheduled sibling")
    parser.add_argument("--output_dir", "--out", type=Path, default=ROOT,
                        help="where BENCHMARKS.md/benchmarks.json go")
    steps = parser.add_argument_group("steps section (defaults: resnet32x4 -> resnet8x4, batch 64; --quick: "
                                      "resnet14 -> resnet8, batch 8)")
    steps.add_argument("--teacher", default=None, help="teacher architecture")
    steps.add_argument("--student", default=None, help="student architecture")
    steps.add_argument("--batch_size", type=int, default=None)
    steps.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, help="--distill methods to time")
    steps.add_argument("--warmup", type=int, default=None, help="untimed steps per row (CPU 1, CUDA 5)")
    steps.add_argument("--steps", type=int, default=None,
                       help="timed steps per row (CPU: 3, the fastest kept; CUDA: 20, timed together)")
    steps.add_argument("--compile", action="store_true",
                       help="add torch.compile rows (minutes of compiling per method on a CPU)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    json_path, markdown_path = args.output_dir / "benchmarks.json", args.output_dir / "BENCHMARKS.md"
    report = json.loads(json_path.read_text()) if json_path.exists() else {"sections": {}}
    env = environment(args, argv)
    for name in args.sections:
        section = SECTIONS[name](args)
        env_after = {**env, "load_average_end": round(os.getloadavg()[0], 2)}
        report["sections"][section.key or name] = {"title": section.title, "environment": env_after,
                                                   "results": section.results, "markdown": section.markdown}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    markdown_path.write_text(render(report))
    return report


if __name__ == "__main__":
    main()
