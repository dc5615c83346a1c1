"""DKD, DIST and logit standardisation (LS) against the authors' code (golden_losses2.pt, which also holds
ReviewKD's cases: tests/reviewkd_golden.py checks those), their flags, and one epoch of each through
train_student.py."""
from __future__ import annotations

import functools
import json
import math
from argparse import Namespace
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

import train_student
from conftest import REFERENCE, reference_file
from dataset.batch import Batch
from distiller_zoo import DISTILLERS, Distiller
from distiller_zoo.DIST import DIST
from distiller_zoo.DKD import TINY, dkd_loss
from distiller_zoo.KD import z_score
from helper.objectives import DistillObjective
from scripts.collect_results import method_row

GOLDEN = "golden_losses2.pt"
LOSS_RTOL = 1e-5  # the reference README's tolerances
GRAD_TOL = 1e-5  # max|a - e| <= GRAD_TOL * max|e|: whole-tensor, as many gradient entries are ~1e-20
CASES_PER_METHOD = {"dkd": 7, "kd": 3, "kd_ls": 6, "dkd_ls": 5, "dist": 6, "reviewkd": 9, "reviewkd_init": 12}
REVIEWKD_METHODS = {"reviewkd", "reviewkd_init"}


@functools.cache
def golden_cases() -> dict[str, dict]:
    """id -> case. Skips where the reference folder is absent (user clones); fails where it lacks the file."""
    path = REFERENCE / GOLDEN if REFERENCE.is_dir() else reference_file(GOLDEN)
    return {case["id"]: case for case in torch.load(path, weights_only=True)["cases"]}


def _case_ids() -> list[str]:
    # Without the file, one id that skips (no reference folder) or fails (folder without the file).
    return list(golden_cases()) if (REFERENCE / GOLDEN).exists() else [GOLDEN]


def case_options(case: dict) -> Namespace:
    """train_student.py's options for a case's settings (METHODS2.md section 5), through its own parser and
    the method's checks."""
    p = case["params"]
    if case["method"] in ("kd", "kd_ls"):
        flags = ["--distill", "kd", "-r", p["ce_weight"], "-a", p["kd_weight"], "--kd_T", p["T"]]
    elif case["method"] in ("dkd", "dkd_ls"):  # params alpha/beta of dkd_ls already include kd_weight
        flags = ["--distill", "dkd", "-r", p["ce_weight"], "-a", 0, "-b", 1, "--dkd_alpha", p["alpha"],
                 "--dkd_beta", p["beta"], "--dkd_T", p["T"], "--dkd_warmup", p["warmup"]]
    elif case["method"] == "dist":
        flags = ["--distill", "dist", "-r", 1, "-a", 0, "-b", p["kd_loss_weight"], "--dist_beta", p["beta"],
                 "--dist_gamma", p["gamma"], "--dist_tau", p["tau"]]
    else:
        pytest.fail(f"{case['id']}: no check for method {case['method']!r}")
    if p.get("logit_stand"):
        flags.append("--logit_stand")
    return train_student.parse_option(["--path_t", "unused/resnet8x4_vanilla/ckpt.pth", "--device", "cpu",
                                       *map(str, flags)])


class FixedLogits(nn.Module):
    """Stands in for a network: the case's logits whatever the images (the logit methods read nothing else)."""

    def __init__(self, logits: torch.Tensor, trainable: bool):
        super().__init__()
        self.logits = nn.Parameter(logits.clone(), requires_grad=trainable)

    def forward(self, images, is_feat=False, preact=False) -> torch.Tensor:
        return self.logits


def pinned_part(objective: DistillObjective, opt: Namespace, logit_s: torch.Tensor, logit_t: torch.Tensor,
                batch: Batch) -> torch.Tensor:
    """The part of the loop's loss a case's ``loss`` pins: alpha*KL for KD (the loop's KL term), the method's
    term for DKD (-b 1) and DIST (the golden loss leaves out the wrapper's weight, our -b)."""
    if opt.distill == "kd":
        return opt.alpha * objective.kl(logit_s, logit_t)
    return objective.distiller([], [], logit_s, logit_t, batch)


def check_logit_case(case: dict) -> None:
    opt = case_options(case)
    inputs, parts = case["inputs"], case["parts"]
    logit_t, target = inputs["logits_teacher"], inputs["target"]
    distiller: Distiller = DISTILLERS[opt.distill](opt, [], [])
    model_s, model_t = FixedLogits(inputs["logits_student"], True), FixedLogits(logit_t, False)
    objective = DistillObjective(model_s, model_t, distiller, opt)
    objective.begin_epoch(case["params"].get("epoch", 1))
    batch = Batch(images=torch.zeros(len(target), 3, 32, 32), labels=target)

    logit_s = inputs["logits_student"].clone().requires_grad_()
    loss = pinned_part(objective, opt, logit_s, logit_t, batch)
    (grad,) = torch.autograd.grad(loss, logit_s)
    torch.testing.assert_close(loss, case["loss"], rtol=LOSS_RTOL, atol=0)
    expected = case["grads"]["logits_student"]
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, expected, rtol=0, atol=GRAD_TOL * expected.abs().max().item())

    # The whole objective, -r/-a/-b and --logit_stand as the loop applies them: CE + the pinned part.
    total = parts.get("wrapper_total") if opt.distill == "dist" else parts["loss_ce"] + case["loss"]
    if total is not None:
        torch.testing.assert_close(objective(batch).loss, total, rtol=LOSS_RTOL, atol=0)
    if opt.distill == "dkd":  # TCKD and NCKD apart (with T^2 and / B), for diagnosis
        s, t = (z_score(inputs["logits_student"]), z_score(logit_t)) if opt.logit_stand else (
            inputs["logits_student"], logit_t)
        torch.testing.assert_close(dkd_loss(s, t, target, 1.0, 0.0, opt.dkd_T), parts["tckd"], rtol=LOSS_RTOL, atol=0)
        torch.testing.assert_close(dkd_loss(s, t, target, 0.0, 1.0, opt.dkd_T), parts["nckd"], rtol=LOSS_RTOL, atol=0)


@pytest.mark.parametrize("case_id", _case_ids())
def test_matches_the_authors_code(case_id):
    case = golden_cases()[case_id]
    if case["method"] in REVIEWKD_METHODS:
        try:
            from reviewkd_golden import check_reviewkd_case
        except ModuleNotFoundError as e:
            if e.name != "reviewkd_golden":
                raise
            pytest.fail("tests/reviewkd_golden.py (check_reviewkd_case) is missing: ReviewKD's cases go unchecked")
        check_reviewkd_case(case)
    else:
        check_logit_case(case)


def test_golden_file_holds_every_case_of_the_reference_readme():
    assert Counter(case["method"] for case in golden_cases().values()) == CASES_PER_METHOD


def test_flag_defaults_are_the_authors_cifar_settings():
    opt = train_student.get_args_parser().parse_args([])
    assert (opt.dkd_alpha, opt.dkd_beta, opt.dkd_T, opt.dkd_warmup) == (1.0, 8.0, 4.0, 20)
    assert (opt.dist_beta, opt.dist_gamma, opt.dist_tau) == (1.0, 1.0, 4.0)
    assert opt.logit_stand is False


@pytest.mark.parametrize("flags,needle", [
    (["--distill", "dkd", "--dkd_T", "0"], "--dkd_T"),
    (["--distill", "dkd", "--dkd_warmup", "0"], "--dkd_warmup"),
    (["--distill", "dkd", "--dkd_beta", "-1"], "--dkd_beta"),
    (["--distill", "dist", "--dist_tau", "0"], "--dist_tau"),
    (["--distill", "dist", "--dist_gamma", "-2"], "--dist_gamma"),
    (["--distill", "dist", "--batch_size", "1"], "--batch_size"),
    (["--distill", "dist", "--logit_stand"], "--logit_stand"),
])
def test_bad_method_flags_exit_with_a_message_naming_the_flag(flags, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        train_student.parse_option(["--path_t", "x/resnet8_vanilla/a.pth", "-a", "0", "-b", "1", *flags])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def random_logits(batch: int, scale: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 100, generator=g) * scale, torch.randn(batch, 100, generator=g) * scale,
            torch.randint(0, 100, (batch,), generator=g))


def test_dkd_term_ramps_up_from_the_first_epoch():
    opt = train_student.get_args_parser().parse_args(["--distill", "dkd"])
    distiller = DISTILLERS["dkd"](opt, [], [])
    logit_s, logit_t, labels = random_logits(8, 3.0)
    terms = {}
    for epoch in (1, 2, 20, 240):
        distiller.set_epoch(epoch)
        terms[epoch] = distiller([], [], logit_s, logit_t, Batch(torch.zeros(8, 3, 32, 32), labels))
    assert terms[1] > 0  # 1-based: the first epoch weighs 1/20, not 0
    torch.testing.assert_close(terms[2], 2 * terms[1])
    torch.testing.assert_close(terms[20], 20 * terms[1])
    torch.testing.assert_close(terms[240], terms[20])


def test_dkd_gives_the_exact_gradient_where_float32_probabilities_underflow():
    # Saturated rows at T = 1 (logit gaps of 100): the non-target mass (rows 0-3) or the target mass (rows 4-7)
    # is below float32's normal range, where the authors' log of the summed probabilities gives NaN gradient
    # rows. float64 holds these values: it is the reference.
    _, logit_t, labels = random_logits(8, 1.0)
    logit_s = torch.empty(8, 100).uniform_(-50, 50, generator=torch.Generator().manual_seed(1))
    rows = torch.arange(8)
    logit_s[:4] = -50.0
    logit_s[rows[:4], labels[:4]] = 50.0
    logit_s[rows[4:], (labels[4:] + 1) % 100] = 50.0
    logit_s[rows[4:], labels[4:]] = -50.0
    p = logit_s.softmax(dim=1)
    p_target = p[rows, labels]
    assert (p_target[4:] < TINY).all() and ((p.sum(dim=1) - p_target) < TINY)[:4].all()
    grads, losses = [], []
    for dtype in (torch.float32, torch.float64):
        x = logit_s.to(dtype).requires_grad_()
        losses.append(dkd_loss(x, logit_t.to(dtype), labels, 1.0, 8.0, 1.0))
        grads.append(torch.autograd.grad(losses[-1], x)[0])
    assert torch.isfinite(grads[0]).all()
    torch.testing.assert_close(losses[0].double(), losses[1], rtol=1e-6, atol=0)
    torch.testing.assert_close(grads[0].double(), grads[1], rtol=0, atol=1e-5 * grads[1].abs().max().item())


def test_dist_on_one_sample_keeps_a_constant_intra_class_term():
    logit_s, logit_t, _ = random_logits(1, 3.0)
    values, grads = [], []
    for gamma in (0.0, 1.0):
        x = logit_s.clone().requires_grad_()
        values.append(DIST(beta=1.0, gamma=gamma, tau=4.0)(x, logit_t))
        grads.append(torch.autograd.grad(values[-1], x)[0])
    torch.testing.assert_close(values[1] - values[0], torch.tensor(16.0))  # gamma * tau^2 * (1 - 0)
    assert torch.isfinite(grads[1]).all()
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


def test_logit_standardised_runs_get_their_own_folder_and_table_row():
    argv = ["--path_t", "x/resnet32x4_vanilla/a.pth", "--distill", "dkd", "-a", "0", "-b", "1"]
    plain, ls = train_student.parse_option(argv), train_student.parse_option(argv + ["--logit_stand"])
    assert plain.save_folder != ls.save_folder and "_dkd_ls_r:" in ls.model_name
    assert method_row({"distill": "kd", "opt": {"alpha": 9.0, "logit_stand": True}}) == "KD+LS"
    assert method_row({"distill": "kd", "opt": {"alpha": 0.9, "logit_stand": False}}) == "KD"
    assert method_row({"distill": "crd", "opt": {"alpha": 1.0}}) == "CRD+KD"


def logged_scalars(tb_folder: str) -> dict[str, float]:
    """The last value of every TensorBoard scalar a run wrote."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tb_folder)
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


E2E_RUNS = {  # name: (flags as in scripts/run_cifar_distill.sh, the logged term that carries the method)
    "dkd": (["--distill", "dkd", "-r", "1", "-a", "0", "-b", "1"], "dkd"),
    "dist": (["--distill", "dist", "-r", "1", "-a", "0", "-b", "2"], "dist"),
    "kd+ls": (["--distill", "kd", "-r", "0.1", "-a", "9", "-b", "0", "--kd_T", "2", "--logit_stand"], "kl"),
    "dkd+ls": (["--distill", "dkd", "-r", "1", "-a", "0", "-b", "1", "--logit_stand", "--dkd_T", "2",
                "--dkd_alpha", "9", "--dkd_beta", "72"], "dkd"),
}


@pytest.mark.parametrize("run", E2E_RUNS)
def test_train_student_trains_an_epoch(run, cifar_data, random_teacher, tmp_path):
    flags, term = E2E_RUNS[run]
    argv = ["--path_t", str(random_teacher("resnet8")), "--model_s", "resnet8", *flags, "--epochs", "1",
            "--batch_size", "64", "--data_folder", str(cifar_data), "--save_root", str(tmp_path),
            "--num_workers", "0", "--device", "cpu", "--seed", "0"]
    assert train_student.main(argv) == 0
    opt = train_student.parse_option(argv)
    results = json.loads((Path(opt.save_folder) / "results.json").read_text())
    assert results["finished"] and results["epochs_done"] == 1 and results["distill"] == opt.distill
    assert results["opt"]["logit_stand"] == ("--logit_stand" in flags)
    value = logged_scalars(opt.tb_folder)[f"loss/{term}"]
    assert math.isfinite(value) and value > 0
