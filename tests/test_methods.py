"""Every ``--distill`` registry entry: one optimisation step on small models, its init stage, its errors."""
from __future__ import annotations

import copy
import functools
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo import DISTILLERS, DistillKL, build_distiller
from distiller_zoo.base import Distiller
from models import model_dict

METHODS = ["kd", "hint", "attention", "similarity", "correlation", "vid", "crd", "kdsvd", "fsp", "rkd", "pkt",
           "abound", "factor", "nst"]
INIT_STAGE_METHODS = ["abound", "factor", "fsp"]
# (teacher, student). FSP and KDSVD compare channels entry by entry, so they get an equal-width pair.
SAME_FAMILY = ("resnet8x4", "resnet8")
CROSS_FAMILY = ("vgg8", "MobileNetV2")
EQUAL_WIDTH = ("wrn_16_1", "resnet8")
BATCH, N_DATA, NCE_K = 4, 32, 16


def _pairs(method: str) -> list[tuple[str, str]]:
    return [EQUAL_WIDTH] if method in ("fsp", "kdsvd") else [SAME_FAMILY, CROSS_FAMILY]


CASES = [(method, pair) for method in METHODS for pair in _pairs(method)]


def _id(case: tuple[str, tuple[str, str]]) -> str:
    method, (teacher, student) = case
    return f"{method}-{teacher}-to-{student}"


def make_opt(distill: str, model_t: str, model_s: str, **overrides) -> Namespace:
    """train_student.py's defaults (METHODS.md 4.1) with a tiny CRD bank."""
    opt = Namespace(dataset="cifar100", distill=distill, model_s=model_s, model_t=model_t, learning_rate=0.05, momentum=0.9,
                    weight_decay=5e-4, gamma=1.0, alpha=1.0, beta=1.0, kd_T=4, feat_dim=128, mode="exact",
                    nce_k=NCE_K, nce_t=0.07, nce_m=0.5, hint_layer=2, n_data=N_DATA, init_epochs=30)
    for key, value in overrides.items():
        setattr(opt, key, value)
    return opt


@functools.cache
def _pristine(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return model_dict[name](num_classes=100)


def make_models(teacher: str, student: str) -> tuple[nn.Module, nn.Module]:
    return copy.deepcopy(_pristine(teacher, 0)), copy.deepcopy(_pristine(student, 1))


def make_batch(contrast_idx: bool = True) -> Batch:
    generator = torch.Generator().manual_seed(2)
    indices = torch.tensor([0, 5, 17, 31])
    sample_idx = torch.randint(0, N_DATA, (BATCH, NCE_K + 1), generator=generator)
    sample_idx[:, 0] = indices
    return Batch(images=torch.randn(BATCH, 3, 32, 32, generator=generator),
                 labels=torch.randint(0, 100, (BATCH,), generator=generator), indices=indices,
                 contrast_idx=sample_idx if contrast_idx else None)


def extra_parameters(modules: list[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def distill_step(distiller: Distiller, model_s: nn.Module, model_t: nn.Module, opt: Namespace,
                 batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """One main-stage step as train_student does it: gamma*CE + alpha*KL + beta*term, teacher frozen."""
    params = list(model_s.parameters()) + extra_parameters(distiller.trainable_modules())
    optimizer = torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    model_s.train()
    distiller.train()
    model_t.eval()
    feat_s, logit_s = model_s(batch.images, is_feat=True, preact=distiller.student_preact)
    with torch.no_grad():
        feat_t, logit_t = model_t(batch.images, is_feat=True, preact=distiller.teacher_preact)
    term = distiller(feat_s, feat_t, logit_s, logit_t, batch)
    loss = (opt.gamma * F.cross_entropy(logit_s, batch.labels)
            + opt.alpha * DistillKL(opt.kd_T)(logit_s, logit_t) + opt.beta * term)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss, term


def init_step(distiller: Distiller, model_s: nn.Module, model_t: nn.Module, opt: Namespace,
              batch: Batch) -> tuple[torch.Tensor, nn.ModuleList]:
    """One init-stage step: only ``init_modules`` train, the rest of the student stays in eval mode."""
    modules = nn.ModuleList(distiller.init_modules(model_s))
    optimizer = torch.optim.SGD(modules.parameters(), lr=distiller.init_learning_rate(opt),
                                momentum=opt.momentum, weight_decay=opt.weight_decay)
    model_t.eval()
    model_s.eval()
    modules.train()
    feat_s, _ = model_s(batch.images, is_feat=True, preact=distiller.student_preact)
    with torch.no_grad():
        feat_t, _ = model_t(batch.images, is_feat=True, preact=distiller.teacher_preact)
    loss = distiller.init_loss(feat_s, feat_t)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss, modules


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor], what: str) -> None:
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), f"{what}: {name} changed"


def test_importing_distiller_zoo_registers_every_method():
    assert sorted(DISTILLERS) == sorted(METHODS)
    assert all(cls.name == name for name, cls in DISTILLERS.items())


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_one_step_trains_the_student_and_extras_and_leaves_the_teacher_alone(case):
    method, (teacher, student) = case
    model_t, model_s = make_models(teacher, student)
    opt = make_opt(method, teacher, student)
    distiller = build_distiller(opt, model_s, model_t)
    teacher_before, student_before = snapshot(model_t), snapshot(model_s)
    frozen_before = [snapshot(m) for m in distiller.frozen_modules()]

    loss, term = distill_step(distiller, model_s, model_t, opt, make_batch())

    assert loss.numel() == 1 and torch.isfinite(loss).all()
    assert term.shape == () and torch.isfinite(term)
    if method in ("kd", "abound", "fsp"):
        assert term.item() == 0, f"{method} adds no term in the main stage"
    else:
        assert term.item() != 0
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

    loss, modules = init_step(distiller, model_s, model_t, opt, make_batch())
    trained = {id(p) for p in modules.parameters()}

    assert loss.shape == () and torch.isfinite(loss) and loss.item() > 0
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


def test_ab_runs_both_networks_on_pre_activation_features():
    assert DISTILLERS["abound"].student_preact and DISTILLERS["abound"].teacher_preact
    assert not any(cls.student_preact or cls.teacher_preact for name, cls in DISTILLERS.items() if name != "abound")
    assert not DISTILLERS["kd"].uses_features


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

    loss, term = distill_step(distiller, model_s, model_t, opt, make_batch(contrast_idx=with_contrast_idx))

    assert torch.isfinite(loss).all() and term.item() > 0
    updated = make_batch().indices
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
    batch = make_batch()
    batch.indices = None
    with pytest.raises(ValueError, match="Batch.indices"):
        distill_step(distiller, model_s, model_t, opt, batch)


def test_building_does_not_mutate_the_options():
    for method in METHODS:
        pair = EQUAL_WIDTH if method in ("fsp", "kdsvd") else SAME_FAMILY
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
    with pytest.raises(ValueError, match=r"unknown --distill 'nope'.*abound.*vid"):
        build_distiller(make_opt("nope", *SAME_FAMILY), model_s, model_t)


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


def test_methods_on_final_features_accept_lists_of_different_length():
    for method in ("kd", "crd", "rkd", "pkt", "correlation", "similarity", "hint"):
        build_from_shapes(method, "ResNet50", "resnet8", RESNET50, RESNET8)
