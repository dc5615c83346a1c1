"""Every ``--distill`` registry entry: one optimisation step on small models, its init stage, its errors; and
the objectives the training loop optimises (helper/objectives.py)."""
from __future__ import annotations

import copy
import math
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import BATCH, N_DATA, PAPER_PAIR_ONLY, ROOT, fresh_model, student_options, tiny_batch
from distiller_zoo import DISTILLERS, build_distiller
from distiller_zoo.base import Distiller, middle
from helper.engine import make_optimizer
from helper.loops import EpochResult, train_epoch
from helper.objectives import DistillObjective, InitObjective

METHODS = sorted(DISTILLERS)
INIT_STAGE_METHODS = [name for name, cls in DISTILLERS.items() if cls.has_init_stage]
# (teacher, student). FSP and KDSVD compare channels entry by entry, so they get an equal-width pair.
SAME_FAMILY = ("resnet8x4", "resnet8")
CROSS_FAMILY = ("vgg8", "MobileNetV2")
EQUAL_WIDTH = ("wrn_16_1", "resnet8")
CPU = torch.device("cpu")


def _pairs(method: str) -> list[tuple[str, str]]:
    if method in PAPER_PAIR_ONLY:
        return [PAPER_PAIR_ONLY[method]]
    return [EQUAL_WIDTH] if method in ("fsp", "kdsvd") else [SAME_FAMILY, CROSS_FAMILY]


CASES = [(method, pair) for method in METHODS for pair in _pairs(method)]


def _id(case: tuple[str, tuple[str, str]]) -> str:
    method, (teacher, student) = case
    return f"{method}-{teacher}-to-{student}"


def make_opt(distill: str, model_t: str, model_s: str, **overrides) -> Namespace:
    """train_student.py's defaults (METHODS.md 4.1) with a tiny CRD bank and a log line every step."""
    return student_options(distill, model_t, model_s, print_freq=1, **overrides)


def make_models(teacher: str, student: str) -> tuple[nn.Module, nn.Module]:
    return fresh_model(teacher, 0), fresh_model(student, 1)


def extra_parameters(modules: list[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def distill_step(distiller: Distiller, model_s: nn.Module, model_t: nn.Module, opt: Namespace,
                 batch, steps: int = 1) -> EpochResult:
    """``steps`` main-stage steps as train_student does them: the real objective in the real loop."""
    objective = DistillObjective(model_s, model_t, distiller, opt)
    params = list(model_s.parameters()) + extra_parameters(distiller.trainable_modules())
    optimizer = make_optimizer(params, opt.learning_rate, opt)
    return train_epoch(1, [batch] * steps, objective, optimizer, opt, CPU)


def init_step(distiller: Distiller, model_s: nn.Module, model_t: nn.Module, opt: Namespace,
              batch, steps: int = 1) -> tuple[EpochResult, nn.ModuleList]:
    """``steps`` init-stage steps as the engine runs them: the real init objective in the real loop."""
    objective = InitObjective(model_s, model_t, distiller)
    optimizer = make_optimizer(objective.modules.parameters(), distiller.init_learning_rate(opt), opt)
    return train_epoch(1, [batch] * steps, objective, optimizer, opt, CPU, stage="init"), objective.modules


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor], what: str) -> None:
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), f"{what}: {name} changed"


def test_importing_distiller_zoo_registers_every_method():
    files = {p.stem for p in (ROOT / "distiller_zoo").glob("*.py")} - {"__init__", "base", "common"}
    defined = {cls.__module__.rsplit(".", 1)[1] for cls in DISTILLERS.values()}
    assert defined == files  # every method file registered something
    assert {"kd", "crd", "dkd", "dist", "reviewkd"} <= set(DISTILLERS)
    assert all(cls.name == name for name, cls in DISTILLERS.items())


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_one_step_trains_the_student_and_extras_and_leaves_the_teacher_alone(case):
    method, (teacher, student) = case
    model_t, model_s = make_models(teacher, student)
    opt = make_opt(method, teacher, student)
    distiller = build_distiller(opt, model_s, model_t)
    teacher_before, student_before = snapshot(model_t), snapshot(model_s)
    frozen_before = [snapshot(m) for m in distiller.frozen_modules()]

    result = distill_step(distiller, model_s, model_t, opt, tiny_batch())

    if not DISTILLERS[method].has_term:  # KD: its loss is the KL term, logged as such
        assert method not in result.terms and "kl" in result.terms
    term = result.terms.get(method, 0.0)
    assert math.isfinite(result.loss) and math.isfinite(term)
    if method in ("kd", "abound", "fsp"):
        assert term == 0, f"{method} adds no term in the main stage"
    else:
        assert term != 0
    for module in distiller.trainable_modules():
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), type(module).__name__
        assert sum(g.abs().sum() for g in grads) > 0, f"{type(module).__name__} got zero gradients"
    assert all(p.grad is None for p in model_t.parameters()), "the teacher must get no gradients"
    assert_unchanged(model_t, teacher_before, "teacher")
    assert any(not torch.equal(v, student_before[k]) for k, v in model_s.state_dict().items())
    for module, before in zip(distiller.frozen_modules(), frozen_before):
        assert not module.training and not any(m.training for m in module.modules())
        assert all(p.grad is None for p in module.parameters())
        assert_unchanged(module, before, type(module).__name__)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in INIT_STAGE_METHODS],
                         ids=[_id(c) for c in CASES if c[0] in INIT_STAGE_METHODS])
def test_init_stage_step_trains_only_the_init_modules(case):
    method, (teacher, student) = case
    model_t, model_s = make_models(teacher, student)
    opt = make_opt(method, teacher, student)
    distiller = build_distiller(opt, model_s, model_t)
    assert distiller.has_init_stage
    teacher_before = snapshot(model_t)

    result, modules = init_step(distiller, model_s, model_t, opt, tiny_batch())
    trained = {id(p) for p in modules.parameters()}

    assert math.isfinite(result.loss) and result.loss > 0
    assert all(p.grad is not None for p in modules.parameters())
    assert sum(p.grad.abs().sum() for p in modules.parameters()) > 0
    assert all(p.grad is None for p in model_s.parameters() if id(p) not in trained)
    assert all(p.grad is None for p in model_t.parameters())
    assert_unchanged(model_t, teacher_before, "teacher")
    if method in ("abound", "fsp"):
        assert any(id(p) in trained for p in model_s.parameters()), "AB/FSP initialise the student"
    else:
        assert not any(id(p) in trained for p in model_s.parameters()), "FT's init stage trains the paraphraser"


def test_methods_without_an_init_stage_say_so():
    model_t, model_s = make_models(*SAME_FAMILY)
    distiller = build_distiller(make_opt("attention", *SAME_FAMILY), model_s, model_t)
    assert not distiller.has_init_stage
    with pytest.raises(NotImplementedError, match="attention has no init stage"):
        distiller.init_modules(model_s)


@pytest.mark.parametrize("student, lr", [("resnet8", 0.01), ("wrn_16_2", 0.01), ("ResNet50", 0.05),
                                         ("MobileNetV2", 0.05)])
def test_factor_init_stage_uses_lr_001_for_resnet_and_wrn_students(student, lr):
    opt = make_opt("factor", "resnet8x4", student)
    distiller = DISTILLERS["factor"](opt, fake_features(RESNET8), fake_features(RESNET8X4))
    assert distiller.init_learning_rate(opt) == lr


def record_features(distiller: Distiller, name: str) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Make ``distiller.<name>`` (forward or init_loss) remember the feature lists it is handed."""
    calls, real = [], getattr(distiller, name)

    def recording(feat_s, feat_t, *rest):
        calls.append((feat_s, feat_t))
        return real(feat_s, feat_t, *rest)

    setattr(distiller, name, recording)
    return calls


@pytest.mark.parametrize("method, preact", [("abound", True), ("attention", False), ("factor", False)])
def test_ab_runs_both_networks_on_pre_activation_features(method, preact):
    """AB compares activation boundaries, i.e. the block outputs before the ReLU (which go negative), in its
    init stage and its main stage; every other method reads the maps after the ReLU."""
    model_t, model_s = make_models(*SAME_FAMILY)
    opt = make_opt(method, *SAME_FAMILY)
    distiller = build_distiller(opt, model_s, model_t)
    seen = record_features(distiller, "forward")
    distill_step(distiller, model_s, model_t, opt, tiny_batch())
    if distiller.has_init_stage:
        init_calls = record_features(distiller, "init_loss")
        init_step(distiller, model_s, model_t, opt, tiny_batch())
        seen += init_calls

    assert len(seen) == (2 if distiller.has_init_stage else 1)
    for feat_s, feat_t in seen:
        for name, feats in (("student", feat_s), ("teacher", feat_t)):
            assert [bool(f.min() < 0) for f in middle(feats)] == [preact] * 3, name


def test_frozen_modules_stay_in_eval_mode_when_the_distiller_is_put_in_train_mode():
    model_t, model_s = make_models(*SAME_FAMILY)
    for method in ("abound", "factor"):
        distiller = build_distiller(make_opt(method, *SAME_FAMILY), model_s, model_t).train()
        assert distiller.training and distiller.frozen_modules()
        assert not any(m.training for f in distiller.frozen_modules() for m in f.modules())
        assert all(m.training for t in distiller.trainable_modules() for m in t.modules())


@pytest.mark.parametrize("with_contrast_idx", [True, False], ids=["dataset-negatives", "alias-sampled-negatives"])
def test_crd_steps_on_cpu_with_and_without_contrast_idx(with_contrast_idx: bool):
    model_t, model_s = make_models(*SAME_FAMILY)
    opt = make_opt("crd", *SAME_FAMILY)
    distiller = build_distiller(opt, model_s, model_t)
    memory_before = distiller.crd.contrast.memory_v1.clone()

    result = distill_step(distiller, model_s, model_t, opt, tiny_batch(contrast_idx=with_contrast_idx))

    assert math.isfinite(result.loss) and result.terms["crd"] > 0
    updated = tiny_batch().indices
    assert not torch.equal(distiller.crd.contrast.memory_v1[updated], memory_before[updated])
    assert (distiller.crd.contrast.params[2:4] > 0).all()


def test_crd_memory_bank_is_saved_with_the_distiller_for_resume():
    model_t, model_s = make_models(*SAME_FAMILY)
    distiller = build_distiller(make_opt("crd", *SAME_FAMILY), model_s, model_t)
    state = distiller.state_dict()
    assert state["crd.contrast.memory_v1"].shape == (N_DATA, 128)
    assert {"crd.contrast.params", "crd.contrast.memory_v2", "crd.embed_s.linear.weight",
            "crd.embed_t.linear.weight"} <= set(state)
    assert distiller.crd.embed_s.linear.in_features == 64 and distiller.crd.embed_t.linear.in_features == 256


def test_crd_without_dataset_indices_is_a_clear_error():
    model_t, model_s = make_models(*SAME_FAMILY)
    opt = make_opt("crd", *SAME_FAMILY)
    distiller = build_distiller(opt, model_s, model_t)
    batch = tiny_batch()
    batch.indices = None
    with pytest.raises(ValueError, match="Batch.indices"):
        distill_step(distiller, model_s, model_t, opt, batch)


def test_building_does_not_mutate_the_options():
    for method in METHODS:
        pair = _pairs(method)[0]
        opt = make_opt(method, *pair)
        before = vars(copy.deepcopy(opt))
        build_distiller(opt, *reversed(make_models(*pair)))
        assert vars(opt) == before, method


def test_build_distiller_restores_the_models_train_eval_modes():
    model_t, model_s = make_models(*SAME_FAMILY)
    model_s.train()
    model_t.train()
    model_s.fc.eval()
    build_distiller(make_opt("hint", *SAME_FAMILY), model_s, model_t)
    assert model_s.training and model_t.training and not model_s.fc.training


def test_unknown_method_names_the_valid_ones():
    model_t, model_s = make_models(*SAME_FAMILY)
    opt = make_opt("kd", *SAME_FAMILY)
    opt.distill = "nope"  # past the parser, whose choices are the registered names
    with pytest.raises(ValueError, match=r"unknown --distill 'nope'.*abound.*vid"):
        build_distiller(opt, model_s, model_t)


def fake_features(shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    return [torch.zeros(shape) for shape in shapes]


# Dummy-batch feature shapes of a few zoo models (models.json), to test errors without building them.
RESNET8 = [(2, 16, 32, 32), (2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8), (2, 64)]
RESNET8X4 = [(2, 32, 32, 32), (2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 256)]
RESNET50 = [(2, 64, 32, 32), (2, 256, 32, 32), (2, 512, 16, 16), (2, 1024, 8, 8), (2, 2048, 4, 4), (2, 2048)]
WRN_40_2 = [(2, 16, 32, 32), (2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 128)]
WRN_40_1 = [(2, 16, 32, 32), (2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8), (2, 64)]


def build_from_shapes(method: str, teacher: str, student: str, t_shapes, s_shapes, **overrides) -> Distiller:
    opt = make_opt(method, teacher, student, **overrides)
    return DISTILLERS[method](opt, fake_features(s_shapes), fake_features(t_shapes))


def test_fsp_between_different_widths_is_rejected_like_the_papers_na():
    with pytest.raises(ValueError, match=r"--distill fsp.*N/A.*student wrn_40_1, teacher wrn_40_2"):
        build_from_shapes("fsp", "wrn_40_2", "wrn_40_1", WRN_40_2, WRN_40_1)


def test_kdsvd_between_different_widths_is_rejected():
    with pytest.raises(ValueError, match=r"--distill kdsvd.*channel counts.*resnet8x4"):
        build_from_shapes("kdsvd", "resnet8x4", "resnet8", RESNET8X4, RESNET8)


@pytest.mark.parametrize("method", ["abound", "vid", "attention", "nst", "fsp", "kdsvd"])
def test_layer_wise_methods_reject_feature_lists_of_different_length(method: str):
    with pytest.raises(ValueError, match=rf"--distill {method} .*ResNet50.*6 and 5 features|"
                                         rf"--distill {method} .*5 and 6 features"):
        build_from_shapes(method, "ResNet50", "resnet8", RESNET50, RESNET8)


@pytest.mark.parametrize("hint_layer", [4, 5, -1])
def test_hint_layer_must_select_a_feature_map(hint_layer: int):
    with pytest.raises(ValueError, match=rf"--hint_layer {hint_layer} .*between 0 and 3"):
        build_from_shapes("hint", "resnet8x4", "resnet8", RESNET8X4, RESNET8, hint_layer=hint_layer)


# The features each method on final features reads (positions in the is_feat list; hint: --hint_layer 2).
READS = {"kd": [], "crd": [-1], "rkd": [-1], "pkt": [-1], "correlation": [-1], "similarity": [-2], "hint": [2]}


@pytest.mark.parametrize("method", sorted(READS))
def test_methods_on_final_features_accept_lists_of_different_length(method: str):
    """A 6-feature teacher (ResNet50) with a 5-feature student: the term is computed from the features the
    method names, whatever else the lists hold (every other entry here is NaN)."""
    distiller = build_from_shapes(method, "ResNet50", "resnet8", RESNET50, RESNET8)
    generator = torch.Generator().manual_seed(0)

    def features(shapes, nan_free: list[int]) -> list[torch.Tensor]:
        feats = [torch.full((BATCH, *shape[1:]), float("nan")) for shape in shapes]
        for i in nan_free:
            feats[i] = torch.randn(feats[i].shape, generator=generator)
        return feats

    feat_s, feat_t = features(RESNET8, READS[method]), features(RESNET50, READS[method])
    logit_s, logit_t = torch.randn(BATCH, 100, generator=generator), torch.randn(BATCH, 100, generator=generator)
    term = copy.deepcopy(distiller)(feat_s, feat_t, logit_s, logit_t, tiny_batch())

    assert term.numel() == 1 and torch.isfinite(term), term
    for i in READS[method]:  # and it does read them
        other_t = list(feat_t)
        other_t[i] = torch.randn(feat_t[i].shape, generator=generator)
        assert copy.deepcopy(distiller)(feat_s, other_t, logit_s, logit_t, tiny_batch()) != term
    if not READS[method]:
        assert term == 0


def kl_by_hand(logit_s: torch.Tensor, logit_t: torch.Tensor, T: float) -> torch.Tensor:
    """Hinton et al.: T^2 times the batch mean of KL(softmax(logit_t / T) || softmax(logit_s / T))."""
    p_t = F.softmax(logit_t / T, dim=1)
    return (p_t * (p_t.log() - F.log_softmax(logit_s / T, dim=1))).sum(dim=1).mean() * T ** 2


@pytest.mark.parametrize("gamma, alpha, beta", [(0.3, 0.7, 2.5), (2.0, 0.1, 0.8), (1.0, 1.5, 0.0)])
def test_distill_objective_is_gamma_ce_plus_alpha_kl_plus_beta_term(gamma, alpha, beta):
    model_t, model_s = make_models(*SAME_FAMILY)
    opt = make_opt("attention", *SAME_FAMILY, gamma=gamma, alpha=alpha, beta=beta, kd_T=3)
    distiller = build_distiller(opt, model_s, model_t)
    batch = tiny_batch()
    model_s.train()
    model_t.eval()
    feat_s, logit_s = model_s(batch.images, is_feat=True)
    with torch.no_grad():
        feat_t, logit_t = model_t(batch.images, is_feat=True)
    ce = -F.log_softmax(logit_s, dim=1).gather(1, batch.labels[:, None]).mean()
    kl = kl_by_hand(logit_s, logit_t, T=3)
    term = distiller(feat_s, feat_t, logit_s, logit_t, batch)

    out = DistillObjective(model_s, model_t, distiller, opt)(batch)

    torch.testing.assert_close(out.loss, gamma * ce + alpha * kl + beta * term)
    assert set(out.terms) == {"ce", "kl", "attention"}  # unweighted, for the logs
    for name, expected in (("ce", ce), ("kl", kl), ("attention", term)):
        torch.testing.assert_close(out.terms[name], expected.detach(), msg=name)
    torch.testing.assert_close(out.logits, logit_s)


def test_distill_objective_skips_the_kl_term_at_alpha_zero(monkeypatch):
    model_t, model_s = make_models(*SAME_FAMILY)
    opt = make_opt("attention", *SAME_FAMILY, gamma=0.5, alpha=0.0, beta=2.0, kd_T=3)
    distiller = build_distiller(opt, model_s, model_t)
    batch = tiny_batch()
    objective = DistillObjective(model_s, model_t, distiller, opt)
    reference = DistillObjective(model_s, model_t, distiller, make_opt("attention", *SAME_FAMILY, gamma=0.5,
                                                                       alpha=1e-30, beta=2.0, kd_T=3))
    model_s.train()
    expected = reference(batch).loss  # 1e-30 * KL: below float32's resolution of the loss

    def no_kl(*args):
        raise AssertionError("the KL term was computed at -a 0")

    monkeypatch.setattr(objective, "kl", no_kl)
    out = objective(batch)
    assert set(out.terms) == {"ce", "attention"}
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["kd", "attention", "abound"])
def test_an_epoch_of_distillation_keeps_the_teacher_in_eval_mode_with_its_batchnorm_statistics(method):
    model_t, model_s = make_models(*SAME_FAMILY)
    assert model_t.training  # as built: the objective has to put it in eval mode
    opt = make_opt(method, *SAME_FAMILY)
    distiller = build_distiller(opt, model_s, model_t)
    teacher_before = snapshot(model_t)  # BatchNorm running means, variances and batch counts included
    student_batches = int(model_s.bn1.num_batches_tracked)

    distill_step(distiller, model_s, model_t, opt, tiny_batch(), steps=2)

    assert not any(m.training for m in model_t.modules())
    assert_unchanged(model_t, teacher_before, "teacher")
    assert int(model_s.bn1.num_batches_tracked) == student_batches + 2  # the student's statistics did move


def test_init_stage_keeps_the_teacher_and_the_rest_of_the_student_in_eval_mode():
    """FT's init stage trains the paraphraser alone: the teacher and the whole student, BatchNorm statistics
    included, come out of an init epoch unchanged."""
    model_t, model_s = make_models(*SAME_FAMILY)
    assert model_t.training and model_s.training  # as built
    opt = make_opt("factor", *SAME_FAMILY)
    distiller = build_distiller(opt, model_s, model_t)
    teacher_before, student_before = snapshot(model_t), snapshot(model_s)
    paraphraser_before = snapshot(distiller.paraphraser)

    _, modules = init_step(distiller, model_s, model_t, opt, tiny_batch(), steps=2)

    assert not any(m.training for m in model_t.modules()) and not any(m.training for m in model_s.modules())
    assert all(m.training for m in modules.modules())
    assert_unchanged(model_t, teacher_before, "teacher")
    assert_unchanged(model_s, student_before, "student")
    assert any(not torch.equal(v, paraphraser_before[k]) for k, v in distiller.paraphraser.state_dict().items())
