"""DKD: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), as mdistiller's DKD.py (LS: its fork's)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Distiller, FlagGroup, MethodError, register_distiller
from .KD import LOGIT_STAND_HELP, z_score

TINY = torch.finfo(torch.float32).tiny  # below this a summed probability's log has no usable float32 gradient


def _binary(p: torch.Tensor, gt: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """(B, C) probabilities -> (B, 2): [target mass, sum of the C - 1 other probabilities] (not 1 - target)."""
    return torch.cat([(p * gt).sum(dim=1, keepdim=True), (p * other).sum(dim=1, keepdim=True)], dim=1)


def _log_binary(b_s: torch.Tensor, z_s: torch.Tensor, target: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """log of the student's (B, 2) binary distribution: the authors' plain log of the summed probabilities
    wherever that is a normal float, the same value in log space where it underflows (a target or non-target
    mass below ~1e-38: logit gaps of ~88*T, e.g. saturated rows at T = 1). There the authors' 1/b overflows and
    the row's gradient is NaN; rows above it get the authors' numbers bit for bit."""
    log_p = F.log_softmax(z_s, dim=1)
    log_space = torch.cat([log_p.gather(1, target.unsqueeze(1)),
                           log_p.masked_fill(gt, -torch.inf).logsumexp(dim=1, keepdim=True)], dim=1)
    # Both branches are finite everywhere, so where() passes no NaN back from the one it does not pick.
    return torch.where(b_s < TINY, log_space, b_s.clamp_min(TINY).log())


def dkd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, target: torch.Tensor, alpha: float,
             beta: float, temperature: float) -> torch.Tensor:
    """alpha*TCKD + beta*NCKD, each a KL summed over the batch, times T^2, divided by B (mdistiller's dkd_loss)."""
    gt = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()  # (B, C), the label column
    other = ~gt
    z_s, z_t = logits_student / temperature, logits_teacher / temperature
    b_s = _binary(F.softmax(z_s, dim=1), gt, other)
    b_t = _binary(F.softmax(z_t, dim=1), gt, other)
    tckd = F.kl_div(_log_binary(b_s, z_s, target, gt), b_t, reduction="sum") * temperature ** 2 / target.shape[0]
    # The label column pushed to probability 0 (not removed): KL over the other classes, renormalised.
    shift = 1000.0 * gt
    nckd = (F.kl_div(F.log_softmax(z_s - shift, dim=1), F.softmax(z_t - shift, dim=1), reduction="sum")
            * temperature ** 2 / target.shape[0])
    return alpha * tckd + beta * nckd


@register_distiller("dkd")
class DKDDistiller(Distiller):
    """DKD on the logits: ``min(epoch / --dkd_warmup, 1) * (--dkd_alpha * TCKD + --dkd_beta * NCKD)`` at
    temperature --dkd_T, epochs counted from 1 (the first epoch weighs 1/warmup). DKD replaces KD: the authors
    train with CE + this term, i.e. ``-r 1 -a 0 -b 1``. With --logit_stand both logits are z-scored first (DKD+LS;
    the authors then scale alpha and beta by their kd_weight: ``--dkd_T 2 --dkd_alpha 9 --dkd_beta 72``).

    Numerics are the authors' (softmax, masked sum, log for TCKD; -1000 on the label after /T for NCKD), except
    where theirs break: a student row whose target or non-target mass underflows float32 (logit gaps of ~88*T,
    reachable at --dkd_T 1) gets a finite loss and the exact gradient in log space instead of a NaN gradient
    row, which would reach the weights unnoticed (the loop checks the loss, and that stays finite)."""
    paper_weights = "DKD (Zhao et al. 2022): -r 1 -a 0 -b 1, --dkd_beta per pair (8 for resnet32x4 -> resnet8x4)"

    uses_features = False

    @classmethod
    def add_arguments(cls, group: FlagGroup) -> None:
        group.add_argument("--dkd_alpha", type=float, default=1.0, help="weight of TCKD (target vs the rest)")
        group.add_argument("--dkd_beta", type=float, default=8.0,
                           help="weight of NCKD (among the non-target classes); the authors' CIFAR-100 value "
                                "depends on the pair (README, 'DKD, DIST and logit standardisation')")
        group.add_argument("--dkd_T", type=float, default=4.0, help="DKD's temperature")
        group.add_argument("--dkd_warmup", type=int, default=20,
                           help="epochs over which the term ramps up linearly: min(epoch / warmup, 1)")
        group.add_argument("--logit_stand", action="store_true", default=False, help=LOGIT_STAND_HELP)

    @classmethod
    def check_options(cls, opt) -> None:
        if opt.dkd_T <= 0:
            raise MethodError(f"--dkd_T must be positive, got {opt.dkd_T}")
        if opt.dkd_warmup < 1:
            raise MethodError(f"--dkd_warmup must be at least 1 (epochs), got {opt.dkd_warmup}")
        for flag in ("dkd_alpha", "dkd_beta"):
            if getattr(opt, flag) < 0:
                raise MethodError(f"--{flag} must not be negative, got {getattr(opt, flag)}")

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        self.alpha, self.beta, self.temperature = opt.dkd_alpha, opt.dkd_beta, opt.dkd_T
        self.warmup, self.standardize = opt.dkd_warmup, opt.logit_stand

    def warmup_factor(self) -> float:
        return min(self.epoch / self.warmup, 1.0)

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        if self.standardize:
            logit_s, logit_t = z_score(logit_s), z_score(logit_t)
        return self.warmup_factor() * dkd_loss(logit_s, logit_t, batch.labels, self.alpha, self.beta,
                                               self.temperature)
