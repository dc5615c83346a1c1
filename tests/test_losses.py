"""Every distillation loss against the original implementation's golden vectors, plus CRD's state."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import reference_file
from crd import AliasMethod, ContrastMemory, CRDLoss
from crd.memory import Constants, _gathered_scores, _TransposedBank, _WholeBankScores
from distiller_zoo import (FSP, KDSVD, PKT, ABLoss, Attention, Correlation, DistillKL, FactorTransfer, HintLoss,
                           NSTLoss, RKDLoss, Similarity, VIDLoss)
from distiller_zoo.NST import poly_kernel_mean, poly_kernel_means
from models.util import Connector, ConvReg, LinearEmbed, Paraphraser, Translator

LOSS_RTOL = 1e-4
LOSS_ATOL = 1e-7  # PKT's same-pair loss (~1.2e-6) is float32 cancellation noise in the original too
GRAD_RTOL = 1e-3
N_CASES = 26


def _cases() -> list[dict]:
    return torch.load(reference_file("golden_losses.pt"), weights_only=True)


def _case_ids() -> list[str]:
    try:
        return [f"{c['method']}-{c['pair']}" for c in _cases()]
    except pytest.skip.Exception:
        return [str(i) for i in range(N_CASES)]


def _shapes(tensors: list[torch.Tensor]) -> list[torch.Size]:
    return [t.shape for t in tensors]


def _crd_opt(ctor: dict) -> SimpleNamespace:
    return SimpleNamespace(**{k: ctor[k] for k in ("s_dim", "t_dim", "feat_dim", "nce_k", "nce_t", "nce_m",
                                                    "n_data")})


def _build(case: dict) -> tuple[nn.Module, callable]:
    """The module holding the case's state (original names) and a function inputs -> list of losses."""
    method, ctor = case["method"], case["ctor"]
    xs, xt = case["inputs_s"], case["inputs_t"]
    if method == "kd":
        kd = DistillKL(ctor["T"])
        return kd, lambda s, t: [kd(s[0], t[0])]
    if method == "hint":
        holder = nn.ModuleDict({"regress": ConvReg(xs[0].shape, xt[0].shape)}).train()
        return holder, lambda s, t: [HintLoss()(holder["regress"](s[0]), t[0])]
    if method == "attention":
        return nn.Module(), lambda s, t: Attention(ctor["p"])(s, t)
    if method == "similarity":
        return nn.Module(), lambda s, t: Similarity()(s, t)
    if method == "correlation":
        holder = nn.ModuleDict({"embed_s": LinearEmbed(xs[0].shape[1], ctor["feat_dim"]),
                                "embed_t": LinearEmbed(xt[0].shape[1], ctor["feat_dim"])})
        return holder, lambda s, t: [Correlation()(holder["embed_s"](s[0]), holder["embed_t"](t[0]))]
    if method == "vid":
        holder = nn.ModuleList(VIDLoss(a.shape[1], b.shape[1], b.shape[1]) for a, b in zip(xs, xt))
        return holder, lambda s, t: [vid(a, b) for vid, a, b in zip(holder, s, t)]
    if method == "rkd":
        return nn.Module(), lambda s, t: [RKDLoss(ctor["w_d"], ctor["w_a"])(s[0], t[0])]
    if method == "pkt":
        return nn.Module(), lambda s, t: [PKT()(s[0], t[0])]
    if method == "abound":
        holder = nn.ModuleDict({"connector": Connector(_shapes(xs), _shapes(xt))})
        ab = ABLoss(ctor["feat_num"], ctor["margin"])
        return holder, lambda s, t: ab(holder["connector"](s), t)
    if method == "factor":
        holder = nn.ModuleDict({"paraphraser": Paraphraser(xt[0].shape), "translator": Translator(xs[0].shape,
                                                                                                   xt[0].shape)})
        holder["paraphraser"].eval()
        return holder, lambda s, t: [FactorTransfer()(holder["translator"](s[0]),
                                                      holder["paraphraser"](t[0], is_factor=True))]
    if method == "factor_init":
        holder = nn.ModuleDict({"paraphraser": Paraphraser(xt[0].shape)})
        return holder, lambda s, t: [nn.MSELoss()(holder["paraphraser"](t[0])[1], t[0])]
    if method == "fsp":
        return nn.Module(), lambda s, t: FSP(_shapes(xs), _shapes(xt))(s, t)
    if method == "nst":
        return nn.Module(), lambda s, t: NSTLoss()(s, t)
    if method == "kdsvd":
        return nn.Module(), lambda s, t: KDSVD(ctor["k"])(s, t)
    if method == "crd":
        crd = CRDLoss(_crd_opt(ctor))
        return crd, lambda s, t: [crd(s[0], t[0], ctor["idx"], ctor["contrast_idx"])]
    raise AssertionError(f"golden case for unknown method {method}")


def _grad_scale(case: dict) -> float:
    """Largest gradient entry of the case: some gradients are exactly zero in exact arithmetic (a conv bias
    before train-mode BN) and only float noise remains, so the absolute tolerance is case-wide."""
    grads = [g for g in [*case["grad_inputs_s"], *case["grad_params"].values()] if g is not None]
    return max(g.abs().max().item() for g in grads)


def _grad_close(actual: torch.Tensor | None, expected: torch.Tensor | None, what: str, scale: float) -> None:
    if expected is None:
        assert actual is None or not actual.any(), f"{what}: expected no gradient"
        return
    assert actual is not None, f"{what}: missing gradient"
    torch.testing.assert_close(actual, expected, rtol=GRAD_RTOL, atol=1e-5 * scale,
                               msg=lambda m: f"{what}: {m}")


def test_the_golden_file_has_every_case():
    methods = {c["method"] for c in _cases()}
    assert len(_cases()) == N_CASES
    assert methods == {"kd", "hint", "attention", "similarity", "correlation", "vid", "rkd", "pkt", "abound",
                       "factor", "factor_init", "fsp", "nst", "kdsvd", "crd"}


@pytest.mark.parametrize("index", range(N_CASES), ids=_case_ids())
def test_loss_values_and_gradients_match_the_original(index: int):
    case = _cases()[index]
    holder, compute = _build(case)
    holder.load_state_dict(case["state_dict"], strict=True)
    inputs_s = [x.clone().requires_grad_(True) for x in case["inputs_s"]]
    inputs_t = [x.clone() for x in case["inputs_t"]]

    losses = compute(inputs_s, inputs_t)

    assert len(losses) == len(case["losses"])
    for i, (loss, expected) in enumerate(zip(losses, case["losses"])):
        assert loss.shape == expected.shape, f"loss {i}: shape {tuple(loss.shape)} != {tuple(expected.shape)}"
        torch.testing.assert_close(loss.detach(), expected, rtol=LOSS_RTOL, atol=LOSS_ATOL)
    sum(losses).sum().backward()
    scale = _grad_scale(case)
    for i, (x, expected) in enumerate(zip(inputs_s, case["grad_inputs_s"])):
        _grad_close(x.grad, expected, f"grad of student input {i}", scale)
    params = dict(holder.named_parameters())
    assert set(params) == set(case["grad_params"])
    for name, expected in case["grad_params"].items():
        _grad_close(params[name].grad, expected, f"grad of {name}", scale)
    if case["state_dict_after"] is not None:
        after = holder.state_dict()
        assert list(after) == list(case["state_dict_after"])
        for name, expected in case["state_dict_after"].items():
            torch.testing.assert_close(after[name], expected, rtol=LOSS_RTOL, atol=1e-6, msg=lambda m: f"{name}: {m}")


def _crd_case(pair: str) -> dict:
    return next(c for c in _cases() if c["method"] == "crd" and c["pair"] == pair)


def _tiny_crd_opt(**overrides) -> SimpleNamespace:
    opt = dict(s_dim=16, t_dim=24, feat_dim=8, nce_k=32, nce_t=0.07, nce_m=0.5, n_data=64)
    opt.update(overrides)
    return SimpleNamespace(**opt)


def test_crd_state_dict_keys_are_the_originals():
    keys = list(CRDLoss(_tiny_crd_opt()).state_dict())
    assert keys == ["embed_s.linear.weight", "embed_s.linear.bias", "embed_t.linear.weight", "embed_t.linear.bias",
                    "contrast.params", "contrast.memory_v1", "contrast.memory_v2"]


def test_crd_params_buffer_holds_k_t_unset_normalizers_and_momentum():
    params = CRDLoss(_tiny_crd_opt()).contrast.params
    assert params.dtype == torch.float32
    assert params.tolist() == [32.0, torch.tensor(0.07).item(), -1.0, -1.0, 0.5]


def test_crd_samples_negatives_on_cpu_when_no_contrast_idx_is_given():
    torch.manual_seed(0)
    crd = CRDLoss(_tiny_crd_opt())
    f_s = torch.randn(4, 16, requires_grad=True)
    idx = torch.tensor([3, 10, 20, 63])

    loss = crd(f_s, torch.randn(4, 24), idx)
    loss.sum().backward()

    assert loss.shape == (1,) and torch.isfinite(loss).all()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert crd.embed_t.linear.weight.grad.abs().sum() > 0
    assert (crd.contrast.params[2:4] > 0).all(), "normalisation constants are set by the first batch"


def test_alias_sampling_puts_the_positive_first_and_stays_in_range():
    torch.manual_seed(0)
    memory = ContrastMemory(8, 50, K=20)
    y = torch.tensor([1, 2, 3])
    captured = {}
    original = memory.multinomial.draw

    def draw(n: int) -> torch.Tensor:
        captured["idx"] = original(n)
        return captured["idx"]

    memory.multinomial.draw = draw
    memory(torch.randn(3, 8), torch.randn(3, 8), y)
    idx = captured["idx"].view(3, 21)
    assert torch.equal(idx[:, 0], y)
    assert idx.min() >= 0 and idx.max() < 50


def test_alias_tables_are_uniform_for_the_cifar_bank_and_follow_the_module_device():
    alias = AliasMethod(torch.ones(50000))
    assert torch.equal(alias.prob, torch.ones(50000)) and not alias.alias.any()
    assert set(dict(alias.named_buffers())) == {"prob", "alias"} and not alias.state_dict()
    assert alias.to("meta").prob.device.type == "meta"


def test_alias_method_reproduces_a_skewed_distribution():
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    draws = AliasMethod(probs).draw(200_000)
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)


def test_crd_state_dict_round_trip_gives_the_same_next_loss():
    case = _crd_case("cross")
    ctor = case["ctor"]
    crd = CRDLoss(_crd_opt(ctor))
    crd.load_state_dict(case["state_dict"])
    crd(case["inputs_s"][0], case["inputs_t"][0], ctor["idx"], ctor["contrast_idx"])  # sets Z, updates memory
    saved = copy.deepcopy(crd.state_dict())

    resumed = CRDLoss(_crd_opt(ctor))
    resumed.load_state_dict(saved)
    # Use the resumed module once before loading, so a stale cached Z would show.
    resumed.contrast._constants = Constants(64, 0.07, 1.0, 1.0, 0.5)
    resumed.load_state_dict(saved)
    f_s, f_t = case["inputs_s"][0].flip(0), case["inputs_t"][0].flip(0)
    expected = crd(f_s, f_t, ctor["idx"], ctor["contrast_idx"])
    actual = resumed(f_s, f_t, ctor["idx"], ctor["contrast_idx"])

    torch.testing.assert_close(actual, expected)
    for name, value in crd.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=lambda m: f"{name}: {m}")


def test_crd_whole_bank_and_gathered_scoring_agree_with_repeated_rows():
    torch.manual_seed(0)
    bank, embedding = torch.randn(40, 8), torch.randn(3, 8)
    banks = [bank.clone() for _ in range(2)]
    v = [embedding.clone().requires_grad_(True) for _ in range(2)]
    idx = torch.randint(0, 40, (3, 11))
    y = torch.tensor([5, 9, 5, idx[0, 3].item()])  # a repeated row (two ranks' copies), one row also sampled
    new_rows = torch.randn(40, 8)[y]
    new_rows[2] = new_rows[0]  # copies of a row carry the same update
    scratch = torch.empty(3, 40)
    transposed = _TransposedBank()
    transposed.sync(banks[0])
    whole = _WholeBankScores.apply(v[0], banks[0], idx, y, new_rows, scratch, transposed)
    gathered = _gathered_scores(v[1], banks[1], idx, y, new_rows)
    weights = torch.randn(3, 11)
    (whole * weights).sum().backward()
    (gathered * weights).sum().backward()
    torch.testing.assert_close(whole, gathered)
    torch.testing.assert_close(v[0].grad, v[1].grad)
    assert torch.equal(banks[0], banks[1]) and torch.equal(banks[0][y], new_rows)
    assert torch.equal(transposed.transposed, banks[0].t()) and transposed.follows(banks[0])


def _crd_step(crd: CRDLoss, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, grad of the student features) of one CRD step on inputs drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    f_s = torch.randn(4, 16, generator=generator).requires_grad_(True)
    f_t = torch.randn(4, 24, generator=generator)
    contrast_idx = torch.randint(0, 64, (4, 33), generator=generator)
    loss = crd(f_s, f_t, contrast_idx[:, 0], contrast_idx)
    loss.sum().backward()
    return loss.detach(), f_s.grad


def test_crd_bank_copies_follow_a_loaded_state():
    torch.manual_seed(0)
    trained, other = CRDLoss(_tiny_crd_opt()), CRDLoss(_tiny_crd_opt())
    _crd_step(trained, 1)  # builds its bank copies
    _crd_step(other, 2)
    state = copy.deepcopy(other.state_dict())
    trained.load_state_dict(state)
    fresh = CRDLoss(_tiny_crd_opt())
    fresh.load_state_dict(state)
    for a, b in zip(_crd_step(trained, 3), _crd_step(fresh, 3)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    trained.contrast.memory_v1 = trained.contrast.memory_v1.clone()  # a new tensor, as .to(device) makes
    trained.contrast.memory_v1[0] = 0.5
    fresh.contrast.memory_v1[0] = 0.5
    for a, b in zip(_crd_step(trained, 4), _crd_step(fresh, 4)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_crd_gradient_under_bf16_autocast_is_close_to_float32_and_the_scores_stay_float32():
    torch.manual_seed(0)
    crd = CRDLoss(_tiny_crd_opt())
    reference = copy.deepcopy(crd)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grad = _crd_step(crd, 1)
    expected_loss, expected_grad = _crd_step(reference, 1)
    # The embeddings' linear layers run in bf16 under autocast; the scores, exp and loss in float32.
    torch.testing.assert_close(loss, expected_loss, rtol=2e-2, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=5e-2, atol=5e-2 * expected_grad.abs().max().item())
    assert loss.dtype == torch.float32


def test_crd_backward_after_a_second_forward_is_refused():
    crd = CRDLoss(_tiny_crd_opt())
    assert crd.contrast.scores_whole_bank(4, 32)
    idx = torch.arange(4)
    first = crd(torch.randn(4, 16, requires_grad=True), torch.randn(4, 24), idx)
    crd(torch.randn(4, 16), torch.randn(4, 24), idx)  # updates the bank again before the first backward
    with pytest.raises(RuntimeError, match="memory bank changed between a forward pass and its backward"):
        first.sum().backward()


@pytest.mark.parametrize("n_data", [64, 2000], ids=["small-bank-whole-bank-scoring", "large-bank-gathered-scoring"])
def test_crd_gradients_use_the_memory_before_its_update(n_data: int):
    torch.manual_seed(0)
    crd = CRDLoss(_tiny_crd_opt(n_data=n_data))
    contrast_idx = torch.randint(0, n_data, (4, 33))
    idx = contrast_idx[:, 0]
    f_s = torch.randn(4, 16, requires_grad=True)
    f_t = torch.randn(4, 24)
    reference = copy.deepcopy(crd)

    crd(f_s, f_t, idx, contrast_idx).sum().backward()

    # Same loss with the update switched off: identical gradients prove the backward saw the old bank.
    reference.contrast._updated_rows = lambda memory, v, y, momentum: memory.index_select(0, y)
    f_s_ref = f_s.detach().clone().requires_grad_(True)
    reference(f_s_ref, f_t, idx, contrast_idx).sum().backward()
    torch.testing.assert_close(f_s.grad, f_s_ref.grad)
    assert not torch.equal(crd.contrast.memory_v1, reference.contrast.memory_v1)


def test_crd_announces_the_normalisation_constants_once_through_logging(caplog):
    crd = CRDLoss(_tiny_crd_opt())
    idx = torch.arange(4)
    with caplog.at_level("INFO", logger="crd"):
        crd(torch.randn(4, 16), torch.randn(4, 24), idx)
        crd(torch.randn(4, 16), torch.randn(4, 24), idx)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("normalization constant Z_v1 is set to" in m for m in messages) == 1
    assert sum("normalization constant Z_v2 is set to" in m for m in messages) == 1


def test_nst_batched_gram_equals_the_explicit_polynomial_kernel():
    torch.manual_seed(0)
    a, b = torch.randn(2, 5, 7), torch.randn(2, 3, 7)
    explicit = (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2).mean()  # (B, C_b, C_a, HW) summed
    torch.testing.assert_close(poly_kernel_mean(a, b), explicit)


@pytest.mark.parametrize("c_s, c_t, hw", [(8, 8, 64), (64, 64, 16), (48, 80, 9)],
                         ids=["channel-grams", "spatial-grams", "spatial-grams-unequal-widths"])
def test_nst_kernel_means_take_either_route_to_the_same_values_and_gradients(c_s, c_t, hw):
    torch.manual_seed(0)
    f_s = torch.randn(3, c_s, hw, requires_grad=True)
    f_t = torch.randn(3, c_t, hw)
    means = poly_kernel_means(f_s, f_t)
    direct = (poly_kernel_mean(f_t, f_t), poly_kernel_mean(f_s, f_s), poly_kernel_mean(f_s, f_t))
    for got, expected in zip(means, direct):
        torch.testing.assert_close(got, expected)
    grad, = torch.autograd.grad(means[1] - 2 * means[2], f_s)
    expected_grad, = torch.autograd.grad(direct[1] - 2 * direct[2], f_s)
    torch.testing.assert_close(grad, expected_grad)


def test_fsp_rejects_unequal_channel_counts_with_the_original_message():
    with pytest.raises(ValueError, match="num of channels not equal"):
        FSP([(2, 16, 8, 8), (2, 32, 4, 4)], [(2, 16, 8, 8), (2, 64, 4, 4)])


def test_convreg_names_both_shapes_when_it_cannot_map_them():
    with pytest.raises(NotImplementedError, match=r"\(2, 8, 4, 4\).*\(2, 8, 16, 16\)"):
        ConvReg((2, 8, 4, 4), (2, 8, 16, 16))


@pytest.mark.parametrize("s_h, t_h, kind, out_h", [(16, 8, nn.Conv2d, 8), (4, 8, nn.ConvTranspose2d, 8),
                                                   (6, 4, nn.Conv2d, 4), (8, 8, nn.Conv2d, 8)])
def test_convreg_picks_the_kernel_that_maps_student_onto_teacher_size(s_h, t_h, kind, out_h):
    reg = ConvReg((2, 3, s_h, s_h), (2, 5, t_h, t_h))
    assert type(reg.conv) is kind
    assert reg(torch.randn(2, 3, s_h, s_h)).shape == (2, 5, out_h, out_h)


def test_vid_initial_variance_matches_the_original_float32_constant():
    vid = VIDLoss(4, 6, 6)
    assert list(dict(vid.named_parameters())) == ["log_scale", "regressor.0.weight", "regressor.2.weight",
                                                  "regressor.4.weight"]
    assert vid.log_scale[0].item() == pytest.approx(4.99322939, abs=1e-7)


@pytest.mark.parametrize("whole_bank", [True, False], ids=["whole-bank-scoring", "gathered-scoring"])
def test_crd_golden_case_matches_with_either_scoring_strategy(whole_bank: bool, monkeypatch):
    case = _crd_case("cross")
    ctor = case["ctor"]
    monkeypatch.setattr(ContrastMemory, "scores_whole_bank", lambda self, batch_size, K: whole_bank)
    crd = CRDLoss(_crd_opt(ctor))
    crd.load_state_dict(case["state_dict"])
    f_s = case["inputs_s"][0].clone().requires_grad_(True)

    loss = crd(f_s, case["inputs_t"][0], ctor["idx"], ctor["contrast_idx"])
    loss.sum().backward()

    torch.testing.assert_close(loss.detach(), case["losses"][0], rtol=LOSS_RTOL, atol=LOSS_ATOL)
    _grad_close(f_s.grad, case["grad_inputs_s"][0], "grad of student input", _grad_scale(case))
    for name, expected in case["state_dict_after"].items():
        torch.testing.assert_close(crd.state_dict()[name], expected, rtol=LOSS_RTOL, atol=1e-6)
