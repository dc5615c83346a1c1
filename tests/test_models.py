"""The model zoo matches the original RepDistiller models: layout, features and numerics."""
from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import nn

from conftest import reference_file
from models import model_dict
from models.resnet import ResNet
from models.resnetv2 import ResNet18
from models.ShuffleNetv1 import ShuffleBlock
from models.ShuffleNetv2 import ShuffleNetV2
from models.wrn import WideResNet

NUM_CLASSES = 100
ALL_MODELS = list(model_dict)
GOLDEN_MODELS = ["resnet8", "resnet8x4", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"]
# Models whose plain features are relu(preact features) at every stage output.
RELU_OF_PREACT = ["resnet8", "resnet8x4", "ResNet50", "vgg8", "ShuffleV1"]


@functools.cache
def reference() -> dict:
    return json.loads(reference_file("models.json").read_text())


@functools.cache
def golden() -> dict:
    return torch.load(reference_file("golden_models.pt"), weights_only=True)


@functools.cache
def build(name: str) -> nn.Module:
    """One shared instance per architecture: construction of the big ones is the slow part."""
    torch.manual_seed(0)
    return model_dict[name](num_classes=NUM_CLASSES)


def batch(size: int = 2) -> torch.Tensor:
    return torch.randn(size, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


def test_model_dict_lists_the_original_architectures_in_the_original_order():
    assert ALL_MODELS == list(reference())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_state_dict_has_the_original_keys_order_shapes_and_dtypes(name):
    state = build(name).state_dict()
    layout = [[key, list(value.shape), str(value.dtype).removeprefix("torch.")] for key, value in state.items()]
    assert layout == reference()[name]["state_dict"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_parameter_count_matches_the_original(name):
    assert sum(p.numel() for p in build(name).parameters()) == reference()[name]["num_params"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_feature_shapes_and_feat_modules_match_the_original(name):
    model, expected = build(name).train(), reference()[name]
    with torch.no_grad():
        feats, logits = model(batch(), is_feat=True)
        preact_feats, _ = model(batch(), is_feat=True, preact=True)
    assert [list(f.shape) for f in feats] == expected["feat_shapes"]
    assert [list(f.shape) for f in preact_feats] == expected["preact_feat_shapes"]
    assert list(logits.shape) == expected["logit_shape"]
    assert len(model.get_feat_modules()) == expected["num_feat_modules"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_and_backward_give_every_parameter_a_finite_gradient(name):
    model = build(name).train()
    model.zero_grad(set_to_none=True)
    feats, logits = model(batch(), is_feat=True)
    (logits.square().mean() + feats[-1].mean()).backward()
    for key, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), key
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_logits_without_features_equal_logits_with_features(name):
    model = build(name).eval()
    with torch.no_grad():
        fast = model(batch())
        _, with_feats = model(batch(), is_feat=True)
        _, with_preact = model(batch(), is_feat=True, preact=True)
    assert torch.is_tensor(fast)
    torch.testing.assert_close(fast, with_feats, rtol=0, atol=0)
    torch.testing.assert_close(fast, with_preact, rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_get_feat_modules_wraps_the_models_own_submodules_in_a_new_list(name):
    model = build(name)
    first, second = model.get_feat_modules(), model.get_feat_modules()
    assert isinstance(first, nn.ModuleList) and first is not second
    own = {id(m) for m in model.modules()}
    assert all(id(m) in own for m in first)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_get_bn_before_relu_returns_batchnorms_or_refuses_shufflenets(name):
    model = build(name)
    if name.startswith("Shuffle"):
        with pytest.raises(NotImplementedError, match="Overhaul"):
            model.get_bn_before_relu()
        return
    bns = model.get_bn_before_relu()
    assert bns and all(isinstance(bn, nn.BatchNorm2d) for bn in bns)


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_original_checkpoint_loads_strictly_and_reproduces_features_and_logits(name):
    case = golden()[name]
    assert set(case["ckpt"]) == {"epoch", "model", "accuracy"}
    model = model_dict[name](num_classes=NUM_CLASSES)
    model.load_state_dict(case["ckpt"]["model"], strict=True)
    model.eval()
    with torch.no_grad():
        feats, logits = model(case["input"], is_feat=True)
        preact_feats, preact_logits = model(case["input"], is_feat=True, preact=True)
    assert len(feats) == len(case["feats"]) and len(preact_feats) == len(case["preact_feats"])
    for actual, expected in zip(feats, case["feats"]):
        assert_close_relative(actual, expected)
    for actual, expected in zip(preact_feats, case["preact_feats"]):
        assert_close_relative(actual, expected)
    assert_close_relative(logits, case["logit"])
    assert_close_relative(preact_logits, case["logit"])


def test_golden_file_covers_exactly_the_tested_models():
    assert sorted(golden()) == sorted(GOLDEN_MODELS)


@pytest.mark.parametrize("name", RELU_OF_PREACT)
def test_returned_features_are_relu_of_the_returned_preact_features(name):
    model = build(name).eval()
    with torch.no_grad():
        feats, _ = model(batch(), is_feat=True)
        preact_feats, _ = model(batch(), is_feat=True, preact=True)
    stage_outputs = range(1, len(feats) - 1)
    for i in stage_outputs:
        assert (preact_feats[i] < 0).any(), f"feature {i} is not pre-activation"
        torch.testing.assert_close(torch.relu(preact_feats[i]), feats[i], rtol=0, atol=0)


def test_shufflenetv2_preact_features_are_not_channel_shuffled():
    model = build("ShuffleV2").eval()
    with torch.no_grad():
        feats, _ = model(batch(), is_feat=True)
        preact_feats, _ = model(batch(), is_feat=True, preact=True)
    shuffle = ShuffleBlock(groups=2)
    for i in (1, 2, 3):
        torch.testing.assert_close(shuffle(torch.relu(preact_feats[i])), feats[i], rtol=0, atol=0)


def test_mobilenetv2_ignores_preact():
    model = build("MobileNetV2").eval()
    with torch.no_grad():
        feats, _ = model(batch(), is_feat=True)
        preact_feats, _ = model(batch(), is_feat=True, preact=True)
    for plain, pre in zip(feats, preact_feats):
        assert torch.equal(plain, pre)


def test_wrn_preact_features_are_the_following_batchnorm_outputs():
    model = build("wrn_16_1").eval()
    with torch.no_grad():
        feats, _ = model(batch(), is_feat=True)
        preact_feats, _ = model(batch(), is_feat=True, preact=True)
        for bn, plain, pre in zip(model.get_bn_before_relu(), feats[1:4], preact_feats[1:4]):
            torch.testing.assert_close(bn(plain), pre)
    assert torch.equal(feats[0], preact_feats[0]) and torch.equal(feats[4], preact_feats[4])


def test_wrn_preact_forward_updates_the_group_batchnorms_twice_in_train_mode():
    model = WideResNet(depth=16, num_classes=10).train()
    group_bns = model.get_bn_before_relu()
    other_bn = model.block1.layer[0].bn1
    model(batch(), is_feat=True)
    assert [bn.num_batches_tracked.item() for bn in group_bns] == [1, 1, 1]
    model(batch(), is_feat=True, preact=True)
    assert [bn.num_batches_tracked.item() for bn in group_bns] == [3, 3, 3]
    assert other_bn.num_batches_tracked.item() == 2


def test_vgg_applies_pool3_only_to_64_pixel_inputs():
    model = build("vgg8").eval()
    with torch.no_grad():
        feats, _ = model(torch.randn(1, 3, 64, 64), is_feat=True)
    assert [f.shape[-1] for f in feats[:5]] == [64, 32, 16, 8, 4]


@pytest.mark.parametrize(("groups", "order"), [(3, [0, 2, 4, 1, 3, 5]), (2, [0, 3, 1, 4, 2, 5]), (1, list(range(6)))])
def test_channel_shuffle_interleaves_the_groups(groups, order):
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert ShuffleBlock(groups)(x).flatten().tolist() == order


def test_resnetv2_basic_block_variant_builds_and_runs():
    model = ResNet18(num_classes=10).eval()
    with torch.no_grad():
        feats, logits = model(batch(1), is_feat=True, preact=True)
    assert [f.shape[1] for f in feats] == [64, 64, 128, 256, 512, 512] and logits.shape == (1, 10)
    assert len(model.get_bn_before_relu()) == 4


def test_resnet_bottleneck_variant_builds_with_depth_9n_plus_2():
    model = ResNet(11, [16, 16, 32, 64], block_name="Bottleneck", num_classes=10).eval()
    with torch.no_grad():
        feats, logits = model(batch(1), is_feat=True)
    assert feats[-1].shape == (1, 256) and logits.shape == (1, 10)


@pytest.mark.parametrize("build_bad_model", [
    lambda: ResNet(20, [16, 16, 32, 64], block_name="Widget"),
    lambda: ResNet(21, [16, 16, 32, 64]),
    lambda: ResNet(2, [16, 16, 32, 64]),
    lambda: WideResNet(depth=15, num_classes=10),
    lambda: ShuffleNetV2(net_size=3),
], ids=["unknown-block", "bad-resnet-depth", "empty-resnet", "bad-wrn-depth", "unknown-net-size"])
def test_invalid_architecture_arguments_raise_value_error(build_bad_model):
    with pytest.raises(ValueError):
        build_bad_model()


@pytest.mark.parametrize("name", ["MobileNetV2", "resnet8", "ShuffleV1"])
def test_construction_prints_nothing(name, capsys):
    model_dict[name](num_classes=10)
    assert capsys.readouterr().out == ""
