"""ReviewKD against the authors' code: one case of shared/reference/golden_losses2.pt per call.

``check_reviewkd_case(case)`` is called by tests/test_methods2.py for the ``reviewkd`` and ``reviewkd_init``
cases (the file holds no tests itself). Tolerances are the reference README's: loss rtol 1e-5; every other
tensor (feature and parameter gradients, BatchNorm statistics) max|a - e| <= 1e-4 * max|e|; construction
records exactly.
"""
from __future__ import annotations

from argparse import Namespace

import torch
import torch.nn.functional as F

from distiller_zoo.ReviewKD import PAIR_CONFIGS, ReviewKDConfig, ReviewKDDistiller, student_levels

LOSS_RTOL = 1e-5
TENSOR_TOL = 1e-4  # relative to the largest magnitude of the expected tensor


def check_reviewkd_case(case: dict) -> None:
    if case["method"] == "reviewkd":
        _check_step(case)
    elif case["method"] == "reviewkd_init":
        _check_construction(case)
    else:
        raise ValueError(f"not a ReviewKD case: {case['id']}")


def _config(params: dict) -> ReviewKDConfig:
    """The project's layout for a named pair (which must be the one the case used), else the case's own."""
    given = ReviewKDConfig(tuple(params["in_channels"]), tuple(params["out_channels"]), tuple(params["shapes"]),
                           tuple(params["out_shapes"]))
    pair = (params["teacher"], params["student"])
    if pair == ("synthetic", "synthetic"):
        return given
    config = PAIR_CONFIGS[pair]
    assert (config.in_channels, config.out_channels, config.shapes, config.out_shapes or config.shapes) == (
        given.in_channels, given.out_channels, given.shapes, given.out_shapes), pair
    assert config.mid_channel == params["mid_channel"], pair
    return config


def _options(params: dict) -> Namespace:
    return Namespace(dataset="cifar100", distill="reviewkd", model_t=params["teacher"],
                     model_s=params["student"], reviewkd_warmup=params["warmup_epochs"])


def _build(case: dict, feat_s: list[torch.Tensor], feat_t: list[torch.Tensor]) -> ReviewKDDistiller:
    """The distiller as train_student builds it, right after seeding like the authors' construction."""
    config = _config(case["params"])
    torch.manual_seed(case["init_seed"])
    return ReviewKDDistiller(_options(case["params"]), feat_s, feat_t, config=config)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if not expected.is_floating_point():
        assert torch.equal(actual, expected), what
        return
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= TENSOR_TOL * scale, f"{what}: max abs error {error:.3g} > {TENSOR_TOL} x {scale:.3g}"


def _check_step(case: dict) -> None:
    params, inputs = case["params"], case["inputs"]
    feat_s = [f.clone().requires_grad_() for f in inputs["feat_s"]]
    feat_t = inputs["feat_t_preact"]
    distiller = _build(case, feat_s, feat_t)
    built = distiller.state_dict()
    for key, value in case["state_dict"].items():  # convolutions as constructed (BN affine randomised after)
        if "conv" in key and key.endswith(("0.weight", "0.bias")):
            assert torch.equal(built[key], value), f"{case['id']}: {key} not drawn in the authors' order"
    distiller.load_state_dict(case["state_dict"], strict=True)
    distiller.train()
    distiller.set_epoch(params["epoch"])

    term = distiller(feat_s, feat_t, inputs["logits_student"], inputs["logits_teacher"], None)
    loss = params["reviewkd_weight"] * term  # -b times the term, as the training loop adds it
    torch.testing.assert_close(loss.detach(), case["loss"], rtol=LOSS_RTOL, atol=0, msg=lambda m: f"{case['id']}: {m}")
    ce = params["ce_weight"] * F.cross_entropy(inputs["logits_student"], inputs["target"])
    torch.testing.assert_close(ce, case["parts"]["loss_ce"], rtol=LOSS_RTOL, atol=0)
    loss.backward()

    for i, (f, expected) in enumerate(zip(feat_s, case["grads"]["feat_s"], strict=True)):
        if expected is None:
            assert f.grad is None, f"{case['id']}: feat_s[{i}] is not used by the authors' loss"
        else:
            _assert_close(f.grad, expected, f"{case['id']}: d loss / d feat_s[{i}]")
    if case["grads_params"] is not None:
        grads = {name: p.grad for name, p in distiller.named_parameters()}
        assert grads.keys() == case["grads_params"].keys(), case["id"]
        for name, expected in case["grads_params"].items():
            _assert_close(grads[name], expected, f"{case['id']}: d loss / d {name}")
    after = distiller.state_dict()
    for name, expected in case["state_dict_after"].items():  # train-mode BatchNorm: statistics updated
        _assert_close(after[name], expected, f"{case['id']}: {name} after the call")


def _check_construction(case: dict) -> None:
    params = case["params"]
    feat_s = [torch.zeros(2, *shape) for shape in params["student_feat_shapes"]]  # no random draws
    feat_t = [torch.zeros(2, *shape) for shape in params["teacher_preact_feat_shapes"]]
    distiller = _build(case, feat_s, feat_t)
    state = distiller.state_dict()
    assert [key for key, *_ in case["state_summary"]] == list(state), case["id"]
    for key, shape, dtype, first, total in case["state_summary"]:
        value = state[key]
        assert list(value.shape) == list(shape) and str(value.dtype) == f"torch.{dtype}", (case["id"], key)
        assert torch.equal(value.flatten()[:8], first), f"{case['id']}: {key} not drawn in the authors' order"
        assert abs(value.double().sum().item() - total) <= 1e-9 * max(1.0, abs(total)), (case["id"], key)
    assert sum(p.numel() for p in distiller.parameters()) == case["num_params"], case["id"]
    distiller.eval()
    with torch.no_grad():
        results = distiller.review(student_levels(feat_s, distiller.levels))
    assert [list(r.shape[1:]) for r in results] == [list(s) for s in case["result_shapes"]], case["id"]
