"""Speed flags (--amp, --channels_last, --compile), the fast SGD kernels, and the benchmark's quick run."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
from argparse import Namespace

import pytest
import torch
from torch import nn

import train_teacher
from conftest import PAPER_PAIR_ONLY, fresh_model, load, pair_for, student_options, tiny_batch
from distiller_zoo import DISTILLERS, build_distiller
from helper.engine import make_optimizer, use_fast_sgd
from helper.loops import grad_scaler, train_epoch, uses_cuda_graphs
from helper.objectives import DistillObjective
from cli.build import CompiledModule, to_channels_last
from models import model_dict
from scripts import benchmark

CPU = torch.device("cpu")
TEACHER, STUDENT = "resnet14", "resnet8"  # equal widths: every method applies, FSP and KDSVD included
METHODS = sorted(DISTILLERS)
# channels_last only changes the order of the float sums inside the convolutions.
LAYOUT_TOLERANCE = dict(rel_tol=1e-5, abs_tol=1e-5)
# RKD's angles normalise differences of nearly equal pooled features (an untrained student, batch 4): the
# cancellation in e_j - e_i amplifies those reorderings about tenfold, by a factor that varies between CPUs.
RKD_LAYOUT_TOLERANCE = dict(rel_tol=1e-4, abs_tol=1e-4)


def make_opt(method: str, **flags) -> Namespace:
    """train_student.py's defaults for ``method`` on the equal-width pair (or the paper pair it needs); no log
    line (no host sync) per step."""
    return student_options(method, *pair_for(method, TEACHER, STUDENT), print_freq=1000, **flags)


def train_two_steps(method: str, wrap=lambda model: model, **flags) -> tuple[float, nn.Module]:
    """(mean loss, student) of two train_epoch steps of ``method`` from fixed weights and data."""
    opt = make_opt(method, **flags)
    model_t, model_s = fresh_model(opt.model_t, 0), fresh_model(opt.model_s, 1)
    torch.manual_seed(3)  # build_distiller and the CRD memory bank draw from the global generator
    distiller = build_distiller(opt, model_s, model_t)
    to_channels_last(opt, model_s, model_t)
    objective = DistillObjective(wrap(model_s), wrap(model_t), distiller, opt)
    params = [p for module in [model_s, *distiller.trainable_modules()] for p in module.parameters()]
    optimizer = make_optimizer(params, opt.learning_rate, opt)
    batch = tiny_batch()
    result = train_epoch(1, [batch, batch], objective, optimizer, opt, CPU, scaler=grad_scaler(CPU, opt.amp))
    return result.loss, model_s


@functools.cache
def fp32_loss(method: str) -> float:
    return train_two_steps(method)[0]


@pytest.mark.parametrize("method", METHODS)
def test_channels_last_trains_every_method_to_the_float32_loss(method):
    loss, student = train_two_steps(method, channels_last=True)
    assert student.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    tolerance = RKD_LAYOUT_TOLERANCE if method == "rkd" else LAYOUT_TOLERANCE
    assert math.isclose(loss, fp32_loss(method), **tolerance), (loss, fp32_loss(method))


@pytest.mark.parametrize("method", METHODS)
def test_bf16_autocast_gives_a_finite_loss_close_to_float32(method):
    loss, _ = train_two_steps(method, amp=True)
    assert math.isfinite(loss)
    assert math.isclose(loss, fp32_loss(method), rel_tol=0.05, abs_tol=0.05), (loss, fp32_loss(method))


@pytest.mark.parametrize("method", ["kd", "crd"])
def test_channels_last_and_bf16_together_give_a_finite_loss(method):
    loss, _ = train_two_steps(method, amp=True, channels_last=True)
    assert math.isclose(loss, fp32_loss(method), rel_tol=0.05, abs_tol=0.05)


@pytest.mark.parametrize("method", ["kd", "attention"])
def test_compiled_models_give_the_eager_loss(method):
    # aot_eager: the dynamo capture and AOT autograd of --compile without inductor's minutes of C++ builds.
    loss, _ = train_two_steps(method, wrap=functools.partial(CompiledModule, backend="aot_eager"))
    assert math.isclose(loss, fp32_loss(method), rel_tol=1e-6, abs_tol=1e-6)


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no compiler here")


def _failing_backward_backend():
    from torch._dynamo.backends.common import aot_autograd

    return aot_autograd(fw_compiler=lambda gm, inputs: gm.forward, bw_compiler=_failing_backend)


@pytest.mark.parametrize("backend", [_failing_backend, _failing_backward_backend()],
                         ids=["forward-compile-fails", "backward-compile-fails"])
def test_compile_failure_at_the_first_call_falls_back_to_eager_with_a_warning(backend, caplog):
    with caplog.at_level(logging.WARNING, logger="repdistiller"):
        loss, student = train_two_steps("kd", wrap=functools.partial(CompiledModule, backend=backend))
    _, eager_student = train_two_steps("kd")
    assert loss == fp32_loss("kd")
    assert "--compile: torch.compile failed" in caplog.text and "running it eagerly" in caplog.text
    for (name, value), expected in zip(student.state_dict().items(), eager_student.state_dict().values()):
        assert torch.equal(value, expected), f"{name} differs from the eager run (BatchNorm stats updated twice?)"


def test_compile_failure_when_wrapping_falls_back_to_eager(monkeypatch, caplog):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported on this platform")

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = nn.Linear(3, 2)
    with caplog.at_level(logging.WARNING, logger="repdistiller"):
        runner = CompiledModule(model)
    x = torch.randn(4, 3)
    assert torch.equal(runner(x), model(x))
    assert "running it eagerly" in caplog.text


def test_compiled_teacher_run_saves_checkpoints_with_unprefixed_keys(tmp_path, monkeypatch, cifar_data):
    monkeypatch.setattr("cli.build.CompiledModule", functools.partial(CompiledModule, backend="eager"))
    argv = ["--model", "resnet8", "--epochs", "1", "--data_folder", str(cifar_data), "--save_root",
            str(tmp_path / "save"), "--batch_size", "100", "--device", "cpu", "--seed", "0", "--compile",
            "--channels_last"]
    assert train_teacher.main(argv) == 0
    opt = train_teacher.parse_option(argv)
    saved = load(f"{opt.save_folder}/resnet8_last.pth")
    assert not any("_orig_mod" in key for key in saved["model"])
    model_dict["resnet8"](num_classes=100).load_state_dict(saved["model"], strict=True)


def test_compile_flag_takes_an_optional_mode():
    base = ["--model", "resnet8", "--device", "cpu"]
    assert train_teacher.parse_option(base).compile is None
    assert train_teacher.parse_option(base + ["--compile"]).compile == "default"
    reduce_overhead = train_teacher.parse_option(base + ["--compile", "reduce-overhead"])
    assert reduce_overhead.compile == "reduce-overhead" and uses_cuda_graphs(reduce_overhead)
    with pytest.raises(SystemExit):
        train_teacher.parse_option(base + ["--compile", "fastest"])


def test_kd_builds_no_feature_lists():
    calls = []

    def record(module, args, kwargs):
        calls.append(kwargs.get("is_feat", False))

    opt = make_opt("kd")
    model_t, model_s = fresh_model(TEACHER, 0), fresh_model(STUDENT, 1)
    distiller = build_distiller(opt, model_s, model_t)
    for model in (model_s, model_t):
        model.register_forward_pre_hook(record, with_kwargs=True)
    DistillObjective(model_s, model_t, distiller, opt)(tiny_batch())
    assert calls == [False, False]


@pytest.mark.parametrize("method", ["kd", "crd", "attention"])
def test_training_loop_reads_no_tensor_values_between_prints(method, monkeypatch):
    """Every .item()/float()/bool() of a tensor is a host sync on a GPU: none may happen per step."""
    reads = {"count": 0}
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            reads["count"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)

    def reads_in(steps: int) -> int:
        opt = make_opt(method)
        model_t, model_s = fresh_model(TEACHER, 0), fresh_model(STUDENT, 1)
        distiller = build_distiller(opt, model_s, model_t)
        objective = DistillObjective(model_s, model_t, distiller, opt)
        optimizer = make_optimizer(model_s.parameters(), opt.learning_rate, opt)
        objective(tiny_batch())  # CRD reads its constants once, at its first forward
        reads["count"] = 0
        train_epoch(1, [tiny_batch()] * steps, objective, optimizer, opt, CPU)
        return reads["count"]

    reads_in_two_steps = reads_in(2)
    assert reads_in_two_steps > 0  # the epoch's averages are read once, at its end
    assert reads_in(5) == reads_in_two_steps


def test_sgd_uses_the_foreach_kernel_on_cpu_with_the_loop_numbers():
    torch.manual_seed(0)
    models = [model_dict["resnet8"](num_classes=100) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opt = make_opt("kd")
    fast = make_optimizer(models[0].parameters(), 0.1, opt)
    loop = torch.optim.SGD(models[1].parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=False)
    assert fast.param_groups[0]["foreach"] and not fast.param_groups[0]["fused"]
    x = torch.randn(4, 3, 32, 32)
    for _ in range(3):
        for model, optimizer in zip(models, (fast, loop)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
    saved = loop.state_dict()
    fast.load_state_dict(saved)  # restores the saving run's flags ...
    use_fast_sgd(fast)  # ... which the engine re-applies
    assert fast.param_groups[0]["foreach"]


def test_loss_scaler_only_for_float16_autocast(monkeypatch):
    assert grad_scaler(CPU, amp=False) is None
    assert grad_scaler(CPU, amp=True) is None  # bf16 needs none
    monkeypatch.setattr("helper.loops.amp_dtype", lambda device: torch.float16)
    assert isinstance(grad_scaler(CPU, amp=True), torch.amp.GradScaler)


# resnet8's forward multiply-adds per 32x32 image: the 3->16 stem and two 16->16 convolutions at 32x32; then a
# strided 3x3, a 3x3 and a 1x1 shortcut at 16x16 (16->32 channels) and at 8x8 (32->64); the 64->100 classifier.
RESNET8_MACS = (3 * 16 * 9 * 32 * 32 + 2 * 16 * 16 * 9 * 32 * 32 + (16 * 32 * 9 + 32 * 32 * 9 + 16 * 32) * 16 * 16
                + (32 * 64 * 9 + 64 * 64 * 9 + 32 * 64) * 8 * 8 + 64 * 100)


PHYSICAL_MB = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 20


def test_quick_benchmark_writes_a_well_formed_report(tmp_path):
    # KD and CRD (the whole-step pair) and a method the pair cannot run; every method's row is the same code.
    methods = ["kd", "crd", *PAPER_PAIR_ONLY]
    report = benchmark.main(["--quick", "--sections", "steps", "--num_workers", "0", "--out", str(tmp_path),
                             "--methods", *methods])
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    assert json.loads((tmp_path / "benchmarks.json").read_text()) == report
    (key, section), = report["sections"].items()
    results = section["results"]
    assert key == "steps resnet14->resnet8" and section["environment"]["quick"]
    assert results["forward_flops_per_image"]["student"] == 2 * RESNET8_MACS  # 2 FLOPs per multiply-add
    assert set(results["distill_step"]) == set(methods) and "unsupported" in results["distill_step"]["reviewkd"]
    for method, rows in results["distill_step"].items():
        if "unsupported" in rows:  # a method the pair cannot run: a row of n/a
            assert f"| {method} | n/a |" in markdown, method
            continue
        labels = [label for label in rows if label != "best"]
        assert labels[0] == "faithful" and {"fp32", "channels_last", "amp (bfloat16)"} <= set(labels), method
        fastest = max(labels[1:], key=lambda label: rows[label]["images_per_s"])
        assert rows["best"] == fastest, method
        for label in labels:  # in MB: a process holding torch and two networks, within the machine's memory
            row = rows[label]
            assert 100 < row["peak_memory_mb"] < PHYSICAL_MB and 0 <= row["peak_growth_mb"] <= row["peak_memory_mb"]
        cells = " | ".join(f"{rows[label]['images_per_s']:,.1f}" for label in labels)
        assert f"| {method} | {cells} |" in markdown, method  # the table shows the measured numbers
    assert set(results["whole_step"]) == {"kd", "crd"}
    for method, row in results["whole_step"].items():
        assert row["speedup"] == pytest.approx(row["fast_images_per_s"] / row["faithful_images_per_s"])
        assert row["fast_config"] == results["distill_step"][method]["best"]
    for heading in ("Teacher training step", "Distillation step", "Whole distillation step", "What bounds the step"):
        assert heading in markdown
    assert "unknown peak" in markdown  # CPU: no peak FLOP/s table


def test_quick_logit_benchmark_sets_each_method_against_kd(tmp_path):
    # A steps section of the same device and batch (8 under --quick): KD's fastest step, 8 images at 80/s.
    environment = {"date": "-", "device": "-", "torch": "-", "python": "-", "command": "-", "quick": True,
                   "load_average": 0, "load_average_end": 0}
    kd_rows = {"faithful": {"images_per_s": 40.0}, "fp32": {"images_per_s": 80.0}, "best": "fp32"}
    steps = {"title": "steps", "environment": environment, "markdown": "",
             "results": {"device": "cpu", "batch_size": 8, "distill_step": {"kd": kd_rows}}}
    (tmp_path / "benchmarks.json").write_text(json.dumps({"sections": {"steps resnet56->resnet20": steps}}))
    report = benchmark.main(["--quick", "--sections", "logit", "--steps", "5", "--out", str(tmp_path)])
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    section = report["sections"]["logit"]["results"]
    results = section["methods"]
    assert list(results) == ["KD", "KD+LS", "DKD", "DKD+LS", "DIST"]
    assert section["kd_step_ms"] == {"resnet56->resnet20": pytest.approx(100.0)}  # 8 images at 80/s
    for label, row in results.items():
        assert row["ms"] <= row["median_ms"]  # the fastest of 5 calls
        assert row["extra_ms"] == pytest.approx(row["ms"] - results["KD"]["ms"])
        if label != "KD":
            assert row["extra_percent_of_kd_step"] == {"resnet56->resnet20": pytest.approx(row["extra_ms"])}
        assert f"| {label} | `{' '.join(benchmark.LOGIT_METHODS[label])}` | {row['ms']:.3f} |" in markdown
    # Each method's own loss adds aten ops over KD's (the KL term is skipped at -a 0).
    assert all(results[label]["aten_ops"] > results["KD"]["aten_ops"] for label in results if label != "KD")
    assert "over KD's fastest resnet56->resnet20 step" in markdown
    assert "over KD's fastest resnet32x4->resnet8x4 step" not in markdown  # no such section in tmp_path
