"""ReviewKD: Distilling Knowledge via Knowledge Review (Chen et al., CVPR 2021), mdistiller's CIFAR version.

The student's features, deepest first, pass through a chain of attention-based fusion modules (ABFs): each
fuses its level with the (up-sampled) fused map of the level below and maps the result onto the teacher's
pre-activation feature of the same level; the hierarchical context loss (HCL) compares them at several
pooled resolutions. Numerics follow mdistiller @ a08d46f1 (``distillers/ReviewKD.py``) and are pinned by
``shared/reference/golden_losses2.pt``; the per-pair ABF layouts are the authors' ``build_review_kd``
(dvlab-research/ReviewKD, CIFAR-100/model/reviewkd.py), see ``PAIR_CONFIGS``.

Decisions where the authors' code leaves a choice (METHODS2.md §7):

* The objective is the loop's ``gamma*CE + alpha*KL + beta*term`` with ``-r 1 -a 0 -b <weight>``; the term is
  ``min(epoch / --reviewkd_warmup, 1) * HCL`` with 1-based epochs (mdistiller: the first epoch weighs 1/20;
  the official repository counts from 0 and its recipe is not RepDistiller's, so it is not followed).
* ``-b`` carries the per-pair weight: scripts/run_cifar_distill.sh uses the authors' values (0.6 for
  resnet56 -> resnet20, 1.0 for resnet110 -> resnet32, 8.0 for resnet32x4 -> ShuffleV2, 5.0 for the other
  published pairs). The four vgg13/ResNet50 -> vgg8/MobileNetV2 pairs have a layout but no published weight
  (the authors' model imports for them are commented out); we suggest 5.0, mdistiller's only shipped value
  and the official script's for five of its eight pairs. Nothing here depends on it.
* ``shapes`` lists are kept verbatim, including the five-entry list of the small ResNets (four levels): as
  in the authors' ``zip``, only the first ``levels`` entries are used. Every layout is checked against the
  networks' real feature shapes when the method is built, so a stale entry cannot go unnoticed.
* Resizing is ``F.interpolate(mode='nearest')`` as in the authors' code. Every resize of every layout is an
  integer up-sampling (1 -> 2, 2 -> 4, 4 -> 8, ...), where 'nearest' and 'nearest-exact' agree.
* HCL's adaptive average pooling is computed by ``pool_to`` (non-overlapping tiles / a mean): the same
  numbers for these sizes, with a CUDA backward that ``--deterministic`` accepts.
* The ABFs run in train mode (batch statistics, running statistics updated) and in float32, also under
  ``--amp`` (the loop computes every method's term outside autocast). They are trained with the student
  (SGD, weight decay), saved in ``state.pth`` for resume, and never used at test time or written into the
  student's checkpoints.
* The student's post-activation features are used (mdistiller's default ``STU_PREACT = False``; no flag).
* A pair without a layout is refused: ``build_review_kd`` has none to fall back on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Distiller, Features, FlagGroup, MethodError, pair_name, register_distiller
from .common import pool_to

MAX_MID_CHANNEL = 512  # the authors' ``min(512, in_channels[-1])``
HCL_POOL_SIZES = (4, 2, 1)  # HCL's extra resolutions, each weighing half the previous one


@dataclass(frozen=True)
class ReviewKDConfig:
    """One pair's ABF layout as the authors pass it to their constructor: channels shallow -> deep, spatial
    sizes deep -> shallow (1 = the pooled vector)."""

    in_channels: tuple[int, ...]  # student levels
    out_channels: tuple[int, ...]  # teacher levels
    shapes: tuple[int, ...]  # student levels' sizes; entries past ``levels`` are unused (the authors' zip)
    out_shapes: tuple[int, ...] | None = None  # teacher levels' sizes; None: the same as ``shapes``

    @property
    def levels(self) -> int:
        return len(self.in_channels)

    @property
    def mid_channel(self) -> int:
        return min(MAX_MID_CHANNEL, self.in_channels[-1])

    @property
    def student_sizes(self) -> tuple[int, ...]:
        return self.shapes[:self.levels]

    @property
    def teacher_sizes(self) -> tuple[int, ...]:
        return (self.out_shapes or self.shapes)[:self.levels]


_SMALL_RESNET = ReviewKDConfig((16, 32, 64, 64), (16, 32, 64, 64), (1, 8, 16, 32, 32))
_SHUFFLE_SIZES = dict(shapes=(1, 4, 8, 16), out_shapes=(1, 8, 16, 32))
_MOBILENET_V2 = (12, 16, 48, 160, 1280)
_VGG = (128, 256, 512, 512, 512)
_RESNET50 = (256, 512, 1024, 2048, 2048)

# (teacher, student) -> layout, from build_review_kd (METHODS2.md §4).
PAIR_CONFIGS: dict[tuple[str, str], ReviewKDConfig] = {
    ("resnet56", "resnet20"): _SMALL_RESNET,
    ("resnet110", "resnet32"): _SMALL_RESNET,
    ("resnet32x4", "resnet8x4"): ReviewKDConfig((64, 128, 256, 256), (64, 128, 256, 256), (1, 8, 16, 32)),
    ("wrn_40_2", "wrn_16_2"): ReviewKDConfig((32, 64, 128, 128), (32, 64, 128, 128), (1, 8, 16, 32)),
    ("wrn_40_2", "wrn_40_1"): ReviewKDConfig((16, 32, 64, 64), (32, 64, 128, 128), (1, 8, 16, 32)),
    ("vgg13", "vgg8"): ReviewKDConfig(_VGG, _VGG, (1, 4, 4, 8, 16)),
    ("vgg13", "MobileNetV2"): ReviewKDConfig(_MOBILENET_V2, _VGG, (1, 2, 4, 8, 16), (1, 4, 4, 8, 16)),
    ("ResNet50", "MobileNetV2"): ReviewKDConfig(_MOBILENET_V2, _RESNET50, (1, 2, 4, 8, 16), (1, 4, 8, 16, 32)),
    ("ResNet50", "vgg8"): ReviewKDConfig(_VGG, _RESNET50, (1, 4, 4, 8, 16), (1, 4, 8, 16, 32)),
    ("wrn_40_2", "ShuffleV1"): ReviewKDConfig((240, 480, 960, 960), (32, 64, 128, 128), **_SHUFFLE_SIZES),
    ("resnet32x4", "ShuffleV1"): ReviewKDConfig((240, 480, 960, 960), (64, 128, 256, 256), **_SHUFFLE_SIZES),
    ("resnet32x4", "ShuffleV2"): ReviewKDConfig((116, 232, 464, 1024), (64, 128, 256, 256), **_SHUFFLE_SIZES),
}


def supported_pairs() -> str:
    """'teacher -> student, ...' of every pair with a layout, for error messages."""
    return ", ".join(f"{t} -> {s}" for t, s in PAIR_CONFIGS)


class ABF(nn.Module):
    """Attention-based fusion (Chen et al., CVPR 2021): 1x1 conv-BN to ``mid_channel``, fused with the
    residual map of the deeper level by two per-pixel sigmoid weights (when ``fuse``), then 3x3 conv-BN to
    the teacher's width. Built in the authors' order, which fixes how it draws from the random stream."""

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1,
                                             bias=False),
                                   nn.BatchNorm2d(out_channel))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, size: int,
                out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(output for the teacher's level, residual for the next shallower level)."""
        x = self.conv1(x)  # (B, mid, h, w)
        if self.att_conv is not None:
            residual = F.interpolate(residual, (size, size), mode="nearest")  # (B, mid, h, w)
            z = self.att_conv(torch.cat([x, residual], dim=1))  # (B, 2, h, w)
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        if x.shape[-1] != out_size:
            x = F.interpolate(x, (out_size, out_size), mode="nearest")
        return self.conv2(x), x


def hcl_loss(results: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss: per level, the MSE of the maps plus the MSEs of their 4x4, 2x2 and 1x1
    average-pooled versions smaller than the map, weighing 1/2, 1/4, ... in that order, divided by the sum of
    the weights; summed over the levels in the authors' order (shallow -> deep)."""
    loss = 0.0
    for f, g in zip(results, targets):
        level = F.mse_loss(f, g)
        weight, weights = 1.0, 1.0
        for size in HCL_POOL_SIZES:
            if size >= f.shape[2]:
                continue
            weight /= 2.0
            level = level + F.mse_loss(pool_to(f, size), pool_to(g, size)) * weight
            weights += weight
        loss = loss + level / weights
    return loss


def as_map(feat: torch.Tensor) -> torch.Tensor:
    """A pooled (B, C) vector as a (B, C, 1, 1) map; maps unchanged."""
    return feat[:, :, None, None] if feat.dim() == 2 else feat


def student_levels(feat_s: Features, levels: int) -> list[torch.Tensor]:
    """The student's deepest ``levels`` features (never the stem), shallow -> deep, the pooled one as a map."""
    return [as_map(f) for f in feat_s[-levels:]]


def teacher_levels(feat_t: Features) -> list[torch.Tensor]:
    """The teacher's (pre-activation) features after the stem, shallow -> deep, the pooled one as a map."""
    return [as_map(f) for f in feat_t[1:]]


def check_layout(opt, config: ReviewKDConfig, feat_s: Features, feat_t: Features) -> None:
    """A layout must describe the networks' features: (channels, size) of every level on both sides."""

    def described(feats) -> list[tuple[int, int]]:
        return [(f.shape[1], f.shape[-1] if f.dim() == 4 else 1) for f in feats]

    expected_s = list(zip(config.in_channels, config.student_sizes[::-1]))
    expected_t = list(zip(config.out_channels, config.teacher_sizes[::-1]))
    if described(feat_s[1:][-config.levels:]) != expected_s or described(feat_t[1:]) != expected_t:
        raise MethodError(f"ReviewKD's layout expects (channels, size) per level after the stem, shallow -> deep, "
                          f"student {expected_s} and teacher {expected_t}, but {pair_name(opt)} give "
                          f"{described(feat_s[1:])} and {described(feat_t[1:])}")


@register_distiller("reviewkd")
class ReviewKDDistiller(Distiller):
    """ReviewKD: ABFs (trainable, train-mode BatchNorm) fuse the student's deepest ``levels`` features and
    match each teacher pre-activation feature after the stem (pooled vector included) through HCL."""
    paper_weights = "ReviewKD (Chen et al. 2021): -r 1 -a 0 -b 5 for resnet32x4 -> resnet8x4, -b per pair (README)"

    teacher_preact = True

    @classmethod
    def add_arguments(cls, group: FlagGroup) -> None:
        group.add_argument("--reviewkd_warmup", default=20, type=int,
                           help="epochs over which the ReviewKD term ramps up linearly: weight min(epoch/N, 1)")

    @classmethod
    def check_options(cls, opt) -> None:
        if opt.reviewkd_warmup <= 0:
            raise MethodError(f"--reviewkd_warmup must be a positive number of epochs, got {opt.reviewkd_warmup} "
                              f"(the authors use 20)")

    def __init__(self, opt, feat_s, feat_t, config: ReviewKDConfig | None = None):
        """``config``: a layout for a pair outside ``PAIR_CONFIGS`` (the golden tests' synthetic pairs)."""
        super().__init__(opt, feat_s, feat_t)
        if config is None:
            config = PAIR_CONFIGS.get((opt.model_t, opt.model_s))
            if config is None:
                raise MethodError(f"ReviewKD has no ABF layout for {pair_name(opt)}; the authors define it for "
                                  f"(teacher -> student) {supported_pairs()}; use one of those pairs or another "
                                  f"--distill method")
        check_layout(opt, config, feat_s, feat_t)
        self.warmup = opt.reviewkd_warmup
        self.levels = config.levels
        self.sizes, self.out_sizes = config.student_sizes, config.teacher_sizes  # deep -> shallow
        abfs = [ABF(c_in, config.mid_channel, c_out, fuse=i < config.levels - 1)  # built shallow -> deep
                for i, (c_in, c_out) in enumerate(zip(config.in_channels, config.out_channels))]
        self.abfs = nn.ModuleList(abfs[::-1])  # abfs[0]: the deepest level (the authors' state keys)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.abfs]

    def review(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """ABF outputs, shallow -> deep, for the student levels given shallow -> deep."""
        x = levels[::-1]  # deep -> shallow: x[0] is the pooled vector
        out, residual = self.abfs[0](x[0], None, self.sizes[0], self.out_sizes[0])
        results = [out]
        for feat, abf, size, out_size in zip(x[1:], self.abfs[1:], self.sizes[1:], self.out_sizes[1:]):
            out, residual = abf(feat, residual, size, out_size)
            results.insert(0, out)
        return results

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        results = self.review(student_levels(feat_s, self.levels))
        warmup = min(self.epoch / self.warmup, 1.0)
        return (warmup * hcl_loss(results, teacher_levels(feat_t))).reshape(())
