"""--skip_nonfinite with a forward that produces NaN: the skipped batch leaves no trace (BatchNorm statistics,
CRD memory rows, weights), so the epoch ends exactly as if the batch had not been in it."""
import copy
from argparse import Namespace

import pytest
import torch

from dataset.batch import Batch
from distiller_zoo import build_distiller
from helper.engine import make_optimizer
from helper.loops import train_epoch
from helper.objectives import DistillObjective, TeacherObjective
from models import model_dict

N_DATA, K, B = 48, 8, 16


def opt_for(distill: str) -> Namespace:
    return Namespace(dataset="cifar100", distill=distill, feat_dim=16, nce_k=K, nce_t=0.07, nce_m=0.5,
                     n_data=N_DATA, mode="exact", kd_T=4.0, gamma=1.0, alpha=0.5, beta=0.8, hint_layer=2,
                     learning_rate=0.05, momentum=0.9, weight_decay=5e-4, print_freq=1, skip_nonfinite=True,
                     amp=False, channels_last=False, compile=None)


def batch(seed: int, nan: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, 32, 32, generator=g)
    if nan:
        images[3] = float("nan")  # one poisoned image: NaN through BatchNorm's batch statistics to every row
    indices = torch.randperm(N_DATA, generator=g)[:B]
    contrast = torch.randint(0, N_DATA, (B, K + 1), generator=g)
    contrast[:, 0] = indices
    return Batch(images, torch.randint(0, 100, (B,), generator=g), indices, contrast)


def states(*modules: torch.nn.Module) -> list[dict]:
    return [copy.deepcopy(m.state_dict()) for m in modules]


def assert_same(a: list[dict], b: list[dict]) -> None:
    for sa, sb in zip(a, b):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


def distill_run(distill: str, batches: list[Batch]) -> list[dict]:
    opt = opt_for(distill)
    torch.manual_seed(0)
    model_t, model_s = model_dict["resnet8"](num_classes=100), model_dict["resnet8"](num_classes=100)
    distiller = build_distiller(opt, model_s, model_t)
    params = [p for m in [model_s, *distiller.trainable_modules()] for p in m.parameters()]
    optimizer = make_optimizer(params, opt.learning_rate, opt)
    teacher_before = states(model_t)
    result = train_epoch(1, batches, DistillObjective(model_s, model_t, distiller, opt), optimizer, opt,
                         torch.device("cpu"))
    assert_same(states(model_t), teacher_before)
    assert result.skipped == sum(not torch.isfinite(b.images).all() for b in batches)
    return states(model_s, distiller) + [copy.deepcopy(optimizer.state_dict()["state"])]


@pytest.mark.parametrize("distill", ["crd", "kd"])
def test_a_nan_forward_skipped_leaves_student_statistics_and_memory_bank_untouched(distill):
    with_bad = distill_run(distill, [batch(1), batch(2, nan=True), batch(3)])
    without = distill_run(distill, [batch(1), batch(3)])
    assert_same(with_bad[:-1], without[:-1])
    for key, value in with_bad[-1].items():  # momentum buffers
        assert torch.equal(value["momentum_buffer"], without[-1][key]["momentum_buffer"])
    if distill == "crd":
        assert torch.isfinite(with_bad[1]["crd.contrast.memory_v1"]).all()


def test_a_nan_forward_skipped_in_teacher_training_leaves_batchnorm_untouched():
    def teacher_run(batches):
        opt = opt_for("kd")
        torch.manual_seed(0)
        model = model_dict["resnet8"](num_classes=100)
        train_epoch(1, batches, TeacherObjective(model), make_optimizer(model.parameters(), 0.05, opt), opt,
                    torch.device("cpu"))
        return states(model)

    with_bad = teacher_run([batch(1), batch(2, nan=True), batch(3)])
    assert torch.isfinite(with_bad[0]["bn1.running_mean"]).all()
    assert_same(with_bad, teacher_run([batch(1), batch(3)]))
