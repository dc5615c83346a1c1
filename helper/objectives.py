"""What each stage optimises: teacher training, a method's init stage, and distillation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dataset.batch import Batch
from helper.loops import StepOutput


def loss_inputs(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Features as the losses expect them: float32 (bf16 is too coarse for them) in the default memory
    format (they use view(); under --channels_last the networks return NHWC maps). No copy when already so."""
    return [f.to(torch.float32, memory_format=torch.contiguous_format) for f in feats]


class TeacherObjective:
    """Plain cross-entropy training (train_teacher.py, and the vanilla student baselines)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def set_modes(self) -> None:
        self.model.train()

    def __call__(self, batch: Batch) -> StepOutput:
        logits = self.model(batch.images)
        ce = F.cross_entropy(logits.float(), batch.labels)
        return StepOutput(ce, logits, {"ce": ce.detach()})


class DistillObjective:
    """``loss = gamma*CE + alpha*KL(T) + beta*method_term``, the teacher frozen under no_grad."""

    def __init__(self, model_s: nn.Module, model_t: nn.Module, distiller, opt):
        from distiller_zoo import DistillKL

        self.model_s, self.model_t, self.distiller = model_s, model_t, distiller
        self.kl = DistillKL(opt.kd_T)
        self.gamma, self.alpha, self.beta = opt.gamma, opt.alpha, opt.beta

    def set_modes(self) -> None:
        self.model_s.train()
        self.distiller.train()
        for module in self.distiller.frozen_modules():
            module.eval()
        self.model_t.eval()

    def __call__(self, batch: Batch) -> StepOutput:
        x, preact = batch.images, self.distiller.preact
        if self.distiller.uses_features:
            feat_s, logit_s = self.model_s(x, is_feat=True, preact=preact)
            with torch.no_grad():
                feat_t, logit_t = self.model_t(x, is_feat=True, preact=preact)
        else:
            feat_s, feat_t = [], []
            logit_s = self.model_s(x)
            with torch.no_grad():
                logit_t = self.model_t(x)
        # Losses in float32 even under autocast (PKT's ~1e-4 values, KL, CRD's exp do not fit bf16).
        logit_s, logit_t = logit_s.float(), logit_t.float()
        ce = F.cross_entropy(logit_s, batch.labels)
        kl = self.kl(logit_s, logit_t)
        with torch.autocast(x.device.type, enabled=False):
            term = self.distiller(loss_inputs(feat_s), loss_inputs(feat_t), logit_s, logit_t, batch)
        loss = self.gamma * ce + self.alpha * kl + self.beta * term
        terms = {"ce": ce.detach(), "kl": kl.detach(), self.distiller.name: term.detach().sum()}
        return StepOutput(loss, logit_s, terms)


class InitObjective:
    """A method's init stage (AB, FT, FSP): only ``init_modules`` train, the rest of the student is eval."""

    def __init__(self, model_s: nn.Module, model_t: nn.Module, distiller):
        self.model_s, self.model_t, self.distiller = model_s, model_t, distiller
        self.modules = nn.ModuleList(distiller.init_modules(model_s))

    def set_modes(self) -> None:
        self.model_t.eval()
        self.model_s.eval()
        self.modules.train()

    def __call__(self, batch: Batch) -> StepOutput:
        preact = self.distiller.preact
        feat_s, _ = self.model_s(batch.images, is_feat=True, preact=preact)
        with torch.no_grad():
            feat_t, _ = self.model_t(batch.images, is_feat=True, preact=preact)
        with torch.autocast(batch.images.device.type, enabled=False):
            loss = self.distiller.init_loss(loss_inputs(feat_s), loss_inputs(feat_t))
        return StepOutput(loss, None, {"init": loss.detach().sum()})
