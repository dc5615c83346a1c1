"""What each stage optimises: teacher training, a method's init stage, and distillation.

An objective puts its modules in the right modes at the start of every epoch (``begin_epoch``), computes a
batch's loss (``__call__``), and can save what a forward changes outside autograd (``snapshot``: BatchNorm
statistics, CRD bank rows) so that --skip_nonfinite can undo a bad batch.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from distiller_zoo import Distiller, DistillKL
from distiller_zoo.base import snapshot_buffers
from helper.loops import StepOutput


def loss_inputs(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Features as the losses expect them: float32 (bf16 is too coarse for them) in the default memory
    format (they use view(); under --channels_last the networks return NHWC maps). No copy when already so."""
    return [f.to(torch.float32, memory_format=torch.contiguous_format) for f in feats]


def features(model_s, model_t, distiller: Distiller, images: torch.Tensor):
    """(feat_s, logit_s, feat_t, logit_t): both networks on ``images``, the teacher under no_grad, with the
    features the method asks for (none when it reads only logits, before the ReLU where it says so)."""
    if distiller.uses_features:
        feat_s, logit_s = model_s(images, is_feat=True, preact=distiller.student_preact)
        with torch.no_grad():
            feat_t, logit_t = model_t(images, is_feat=True, preact=distiller.teacher_preact)
        return feat_s, logit_s, feat_t, logit_t
    logit_s = model_s(images)
    with torch.no_grad():
        logit_t = model_t(images)
    return [], logit_s, [], logit_t


def _module(model) -> nn.Module:
    """The module behind a model or a CompiledModule runner."""
    return getattr(model, "module", model)


class TeacherObjective:
    """Plain cross-entropy training (train_teacher.py, and the vanilla student baselines)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def begin_epoch(self, epoch: int) -> None:
        self.model.train()

    def snapshot(self, batch: Batch) -> Callable[[], None]:
        return snapshot_buffers(_module(self.model))

    def __call__(self, batch: Batch) -> StepOutput:
        logits = self.model(batch.images)
        ce = F.cross_entropy(logits.float(), batch.labels)
        return StepOutput(ce, logits, {"ce": ce.detach()})


class DistillObjective:
    """``loss = gamma*CE + alpha*KL(T) + beta*method_term``, the teacher frozen under no_grad; under
    --logit_stand the KL compares z-scored logits (LS)."""

    def __init__(self, model_s: nn.Module, model_t: nn.Module, distiller: Distiller, opt):
        self.model_s, self.model_t, self.distiller = model_s, model_t, distiller
        self.kl = DistillKL(opt.kd_T, standardize=getattr(opt, "logit_stand", False))  # hand-built opts lack it
        self.gamma, self.alpha, self.beta = opt.gamma, opt.alpha, opt.beta

    def begin_epoch(self, epoch: int) -> None:
        self.model_s.train()
        self.distiller.train()  # its frozen modules stay in eval mode
        self.model_t.eval()
        self.distiller.set_epoch(epoch)

    def snapshot(self, batch: Batch) -> Callable[[], None]:
        restore_student, restore_method = snapshot_buffers(_module(self.model_s)), self.distiller.snapshot(batch)

        def restore() -> None:
            restore_student()
            restore_method()

        return restore

    def __call__(self, batch: Batch) -> StepOutput:
        feat_s, logit_s, feat_t, logit_t = features(self.model_s, self.model_t, self.distiller, batch.images)
        # Losses in float32 even under autocast (PKT's ~1e-4 values, KL, CRD's exp do not fit bf16).
        logit_s, logit_t = logit_s.float(), logit_t.float()
        ce = F.cross_entropy(logit_s, batch.labels)
        # At -a 0 (DKD, DIST, most feature methods) the KL is not computed: its weight would zero it anyway.
        kl = self.kl(logit_s, logit_t) if self.alpha else None
        with torch.autocast(batch.images.device.type, enabled=False):
            term = self.distiller(loss_inputs(feat_s), loss_inputs(feat_t), logit_s, logit_t, batch)
        loss = self.gamma * ce + (0.0 if kl is None else self.alpha * kl) + self.beta * term
        terms = {"ce": ce.detach(), **({} if kl is None else {"kl": kl.detach()}),
                 # KD has no term of its own (its loss is the KL): no always-zero "kd" curve
                 **({self.distiller.name: term.detach().sum()} if self.distiller.has_term else {})}
        return StepOutput(loss, logit_s, terms)


class InitObjective:
    """A method's init stage (AB, FT, FSP): only ``init_modules`` train, the rest of the student is eval."""

    def __init__(self, model_s: nn.Module, model_t: nn.Module, distiller: Distiller):
        self.model_s, self.model_t, self.distiller = model_s, model_t, distiller
        self.modules = nn.ModuleList(distiller.init_modules(model_s))

    def begin_epoch(self, epoch: int) -> None:
        self.model_t.eval()
        self.model_s.eval()
        self.modules.train()

    def snapshot(self, batch: Batch) -> Callable[[], None]:
        return snapshot_buffers(_module(self.model_s), self.modules)

    def __call__(self, batch: Batch) -> StepOutput:
        feat_s, _, feat_t, _ = features(self.model_s, self.model_t, self.distiller, batch.images)
        with torch.autocast(batch.images.device.type, enabled=False):
            loss = self.distiller.init_loss(loss_inputs(feat_s), loss_inputs(feat_t))
        return StepOutput(loss, None, {"init": loss.detach().sum()})
