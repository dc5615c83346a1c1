"""--deterministic on CUDA: training calls no op that torch.use_deterministic_algorithms(True) refuses there.

The audit runs on the CPU (CI has no GPU): a TorchDispatchMode records every aten op, which are the ops a CUDA
run calls too, since the mode sits above the device kernels. Recorded: each --distill method's init stage,
main stage and validation through the real loop on four teacher/student pairs, CRD's two scoring routes and
two sources of negatives, the CRD sampler's batched kernel, the tensor loader's augmentation, and a training
step of every network of the zoo. None of those ops may be one that raises on CUDA. (The tests that need a GPU
run the same steps there under torch.use_deterministic_algorithms(True).)
"""
from __future__ import annotations

import copy
import functools
import traceback
from argparse import Namespace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import train_student
from dataset import DATASETS
from dataset.batch import Batch
from dataset.fast import TensorTestLoader, TensorTrainLoader
from dataset.sampling import ContrastSampler
from distiller_zoo import DISTILLERS, build_distiller
from distiller_zoo.base import MethodError
from distiller_zoo.common import match_sizes
from distiller_zoo.ReviewKD import PAIR_CONFIGS as REVIEWKD_PAIRS
from helper.engine import make_optimizer
from helper.loops import train_epoch, validate
from helper.objectives import DistillObjective, InitObjective, TeacherObjective
from models import model_dict

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
INFO = DATASETS["cifar100"]

Args = dict[str, Any]

# The ops that torch.use_deterministic_algorithms(True) makes *raise* on CUDA: the list "The following
# normally-nondeterministic operations will throw a RuntimeError when mode=True" of its docstring
# (torch/__init__.py, torch 2.14), as aten op names. "When attempting to differentiate" entries are their
# backward ops. A predicate narrows an entry to the arguments the docstring names (None: always).
RAISES_ON_CUDA: dict[str, Callable[[str, Args], bool] | None] = {
    "avg_pool3d_backward": None,  # nn.AvgPool3d
    "_adaptive_avg_pool2d_backward": None,  # nn.AdaptiveAvgPool2d (a (1, 1) target is a mean, no such op)
    "_adaptive_avg_pool3d_backward": None,  # nn.AdaptiveAvgPool3d
    "adaptive_max_pool2d_backward": None,  # nn.AdaptiveMaxPool2d
    "fractional_max_pool2d_backward": None,  # nn.FractionalMaxPool2d
    "fractional_max_pool3d_backward": None,  # nn.FractionalMaxPool3d
    "max_unpool2d": None,  # nn.MaxUnpool1d, nn.MaxUnpool2d
    "max_unpool3d": None,  # nn.MaxUnpool3d
    "upsample_linear1d_backward": None,  # F.interpolate linear / bilinear / bicubic / trilinear
    "upsample_bilinear2d_backward": None,
    "_upsample_bilinear2d_aa_backward": None,
    "upsample_bicubic2d_backward": None,
    "_upsample_bicubic2d_aa_backward": None,
    "upsample_trilinear3d_backward": None,
    "reflection_pad1d_backward": None,  # nn.ReflectionPad1d/2d/3d
    "reflection_pad2d_backward": None,
    "reflection_pad3d_backward": None,
    # nn.NLLLoss: CUDA's alert sits in nll_loss2d_forward_out_cuda_template (spatial targets, the case of
    # torch's own test); cross-entropy on (B, classes) logits is nll_loss_forward, which has none.
    "nll_loss2d_forward": None,
    "_ctc_loss_backward": None,  # nn.CTCLoss
    # nn.EmbeddingBag with mode='max' (mode 2)
    "_embedding_bag_backward": lambda overload, args: args.get("mode") == 2,
    "_embedding_bag_dense_backward": lambda overload, args: args.get("mode") == 2,
    "put_": None,  # Tensor.put_, accumulate False, and True on CUDA
    "put": None,
    "histc": None,
    "bincount": lambda overload, args: args.get("weights") is not None,
    "median": lambda overload, args: "dim" in overload,  # with indices output
    "grid_sampler_2d_backward": None,  # F.grid_sample
    "grid_sampler_3d_backward": None,
    "cudnn_grid_sampler_backward": None,
    "scatter_reduce": lambda overload, args: args.get("reduce") == "prod",
    "scatter_reduce_": lambda overload, args: args.get("reduce") == "prod",
    "resize_": lambda overload, args: args["self"].is_quantized,  # on a quantized tensor
}


class OpAudit(TorchDispatchMode):
    """Records the name of every aten op called inside it (backward included), and where each op of
    RAISES_ON_CUDA was first called from."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()
        self.refused: dict[str, str] = {}  # "aten.op.overload" -> project stack of its first call

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops.add(name)
        if name in RAISES_ON_CUDA and str(func) not in self.refused:
            narrow = RAISES_ON_CUDA[name]
            if narrow is None or narrow(func._overloadname, _bind(func, args, kwargs)):
                self.refused[str(func)] = _project_stack()
        return func(*args, **kwargs)

    def check(self) -> None:
        if self.refused:
            raise AssertionError("ops that raise on CUDA under --deterministic:\n" + "\n".join(
                f"{op}, called from\n{stack}" for op, stack in self.refused.items()))


def _bind(func, args: tuple, kwargs: dict) -> Args:
    """The call's arguments by schema name, defaults filled in."""
    schema = func._schema.arguments
    bound = {a.name: a.default_value for a in schema if a.has_default_value()}
    bound.update(zip((a.name for a in schema), args))
    bound.update(kwargs)
    return bound


def _project_stack() -> str:
    """The innermost project frames of the current call, and the autograd node it runs in, if any."""
    frames = [f for f in traceback.extract_stack()[:-2] if f.filename.startswith(str(ROOT))
              and "/.venv/" not in f.filename and not f.filename.endswith("test_determinism.py")]
    node = torch._C._current_autograd_node()
    return "".join(traceback.format_list(frames[-4:])) + (f"  in the backward pass, {node.name()}\n" if node else "")



def audited(run: Callable[[], object]) -> OpAudit:
    with OpAudit() as audit:
        run()
    return audit


def test_every_listed_op_is_an_aten_op():
    # A misspelt name would make its entry never match.
    assert [name for name in RAISES_ON_CUDA if not hasattr(torch.ops.aten, name)] == []


@pytest.mark.parametrize("refused, run", [
    ("aten._adaptive_avg_pool2d_backward.default",
     lambda x: F.adaptive_avg_pool2d(x, 3).sum().backward()),
    ("aten.upsample_bilinear2d_backward.default",
     lambda x: F.interpolate(x, scale_factor=2, mode="bilinear").sum().backward()),
    ("aten.reflection_pad2d_backward.default", lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect").sum().backward()),
    ("aten.nll_loss2d_forward.default",
     lambda x: F.cross_entropy(x, torch.zeros(2, 8, 8, dtype=torch.long))),
], ids=["adaptive-pooling", "bilinear-interpolation", "reflection-padding", "spatial-nll"])
def test_the_audit_catches_ops_that_raise_on_cuda(refused, run):
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    audit = audited(lambda: run(x))
    assert list(audit.refused) == [refused]
    with pytest.raises(AssertionError, match=refused.replace(".", r"\.")):
        audit.check()


def test_the_audit_accepts_a_global_average_pooling_and_classification_loss():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    audited(lambda: F.cross_entropy(F.adaptive_avg_pool2d(x, 1).flatten(1), torch.tensor([0, 3])).backward()).check()


@pytest.mark.parametrize("big, small", [(32, 16), (32, 8), (16, 8), (16, 4), (8, 4), (8, 2), (4, 2), (8, 1), (7, 3)])
def test_match_sizes_pools_like_the_originals_adaptive_pooling(big, small):
    student = torch.randn(2, 3, big, big, requires_grad=True)
    teacher = torch.randn(2, 3, small, small)
    grad = torch.randn(2, 3, small, small)
    pooled, same = match_sizes(student, teacher)
    original = F.adaptive_avg_pool2d(student, small)
    assert same is teacher and torch.equal(pooled, original)
    assert torch.equal(*(torch.autograd.grad(out, student, grad)[0] for out in (pooled, original)))


BATCH, N_DATA, NCE_K = 2, 32, 16
# (teacher, student): pairs of the paper, same family, VGG, and one whose block outputs differ in size (32/16/8
# against 16/8/4), where AT, NST, VID and FT pool the teacher's maps (under no_grad) down to the student's;
# and that pair reversed, where they pool the student's maps, so that the pooling is differentiated.
SAME_FAMILY = ("resnet32x4", "resnet8x4")
VGG = ("vgg13", "vgg8")
SIZES_DIFFER = ("resnet32x4", "ShuffleV1")
STUDENT_LARGER = ("ShuffleV1", "resnet8x4")
# FSP and KDSVD compare channels entry by entry and refuse pairs of different widths; ReviewKD has layouts for
# the paper's pairs only.
EQUAL_WIDTHS_ONLY = {"fsp", "kdsvd"}
CASES = [(method, pair) for method in sorted(DISTILLERS) for pair in (SAME_FAMILY, VGG, SIZES_DIFFER, STUDENT_LARGER)
         if not (method in EQUAL_WIDTHS_ONLY and pair in (SIZES_DIFFER, STUDENT_LARGER))
         and not (method == "reviewkd" and pair not in REVIEWKD_PAIRS)]


def make_opt(method: str, teacher: str, student: str, *flags: str, n_data: int = N_DATA) -> Namespace:
    """train_student.py's options (every method's flag defaults) for a tiny run."""
    opt = train_student.get_args_parser().parse_args([
        "--distill", method, "--model_t", teacher, "--model_s", student, "-a", "1", "-b", "1",
        "--nce_k", str(NCE_K), "--print_freq", "1000", "--skip_nonfinite", *flags])
    opt.n_data = n_data
    return opt


@functools.cache
def _pristine(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return model_dict[name](num_classes=INFO.num_classes)


def make_batch(n_data: int = N_DATA, contrast_idx: bool = True) -> Batch:
    generator = torch.Generator().manual_seed(2)
    indices = torch.randperm(n_data, generator=generator)[:BATCH]
    sample_idx = torch.randint(0, n_data, (BATCH, NCE_K + 1), generator=generator)
    sample_idx[:, 0] = indices
    return Batch(torch.randn(BATCH, 3, 32, 32, generator=generator),
                 torch.randint(0, INFO.num_classes, (BATCH,), generator=generator), indices,
                 sample_idx if contrast_idx else None)


def distill(opt: Namespace, batch: Batch, device: torch.device = CPU) -> None:
    """What train_student does with one batch: the init stage if any, the main stage, validation."""
    model_t, model_s = (copy.deepcopy(_pristine(name)).to(device) for name in (opt.model_t, opt.model_s))
    distiller = build_distiller(opt, model_s, model_t)
    if distiller.has_init_stage:
        init = InitObjective(model_s, model_t, distiller)
        train_epoch(1, [batch], init, make_optimizer(init.modules.parameters(), opt.learning_rate, opt), opt,
                    device, stage="init")
    params = [p for module in [model_s, *distiller.trainable_modules()] for p in module.parameters()]
    train_epoch(1, [batch], DistillObjective(model_s, model_t, distiller, opt),
                make_optimizer(params, opt.learning_rate, opt), opt, device)
    validate([batch], model_s, device, opt, verbose=False)


@pytest.mark.parametrize("method, pair", CASES, ids=[f"{m}-{t}-to-{s}" for m, (t, s) in CASES])
def test_distillation_calls_no_op_that_raises_on_cuda(method, pair):
    audited(lambda: distill(make_opt(method, *pair), make_batch())).check()


@pytest.mark.parametrize("n_data", [N_DATA, 4096], ids=["whole-bank-scores", "gathered-scores"])
@pytest.mark.parametrize("contrast_idx", [True, False], ids=["dataset-negatives", "alias-sampled-negatives"])
def test_crd_calls_no_op_that_raises_on_cuda(n_data, contrast_idx):
    opt = make_opt("crd", *SAME_FAMILY, n_data=n_data)
    audited(lambda: distill(opt, make_batch(n_data, contrast_idx))).check()


def test_bf16_autocast_distillation_calls_no_op_that_raises_on_cuda():
    audited(lambda: distill(make_opt("attention", *SIZES_DIFFER, "--amp"), make_batch())).check()


def _labels(class_sizes: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((size,), c) for c, size in enumerate(class_sizes)])


# (labels, k, mode, percent): every branch of ContrastSampler._sample_batched.
SAMPLERS = {
    "distinct-full-pools": (_labels([8] * 4), 8, "exact", 1.0),
    "distinct-percent-pools": (_labels([8] * 4), 4, "relax", 0.5),
    "with-replacement": (_labels([8] * 4), 40, "exact", 1.0),
    "mixed-unbalanced-pools": (_labels([2, 2, 20]), 8, "exact", 1.0),
    "distinct-first-draws": (_labels([200] * 4), 4, "exact", 1.0),  # pools far larger than k (ImageNet)
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_the_batched_crd_sampler_calls_no_op_that_raises_on_cuda(name):
    labels, k, mode, percent = SAMPLERS[name]
    indices = torch.arange(0, len(labels), 3)

    def sample() -> None:
        sampler = ContrastSampler(labels, k, mode, percent, num_classes=int(labels.max()) + 1, seed=1)
        generator = torch.Generator().manual_seed(0)
        sampler.sample(indices, labels[indices], generator)
        # The accelerator kernel, which sample() runs only for labels on an accelerator.
        sampler._sample_batched(indices, labels[indices], generator)

    audited(sample).check()


def test_the_tensor_loader_calls_no_op_that_raises_on_cuda():
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    labels = _labels([8] * 3)

    def load() -> None:
        sampler = ContrastSampler(labels, 4, "relax", num_classes=3)
        for _ in TensorTrainLoader(images, labels, 10, INFO, contrast=sampler, seed=0):
            pass
        for _ in TensorTestLoader(images, labels, 10, INFO):
            pass

    audited(load).check()


@pytest.mark.parametrize("name", list(model_dict))
def test_training_each_network_calls_no_op_that_raises_on_cuda(name):
    torch.manual_seed(0)
    model = model_dict[name](num_classes=INFO.num_classes)
    opt = make_opt("kd", name, name)
    batch = make_batch()

    def train() -> None:
        train_epoch(1, [batch], TeacherObjective(model), make_optimizer(model.parameters(), 0.05, opt), opt, CPU)
        feats, logits = model(batch.images, is_feat=True, preact=True)  # as AB's student
        (sum(f.sum() for f in feats) + logits.sum()).backward()

    audited(train).check()


@pytest.fixture
def deterministic_cuda(monkeypatch):
    """CUDA with torch.use_deterministic_algorithms(True), as --deterministic sets it up."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield torch.device("cuda")
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.mark.parametrize("method, pair", [("fsp", VGG), ("attention", STUDENT_LARGER), ("vid", STUDENT_LARGER),
                                          ("crd", SAME_FAMILY)], ids=["fsp", "attention", "vid", "crd"])
def test_deterministic_cuda_distillation_runs(method, pair, deterministic_cuda):
    distill(make_opt(method, *pair), make_batch(), deterministic_cuda)


def test_deterministic_cuda_refuses_maps_that_do_not_pool_evenly_with_a_clear_error(deterministic_cuda):
    x = torch.randn(2, 4, 7, 7, device=deterministic_cuda, requires_grad=True)
    with pytest.raises(MethodError, match=r"--deterministic cannot match .*7x7 does not pool evenly to 3x3"):
        match_sizes(x, torch.randn(2, 4, 3, 3, device=deterministic_cuda))
