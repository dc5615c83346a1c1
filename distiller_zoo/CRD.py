"""CRD: Contrastive Representation Distillation (Tian et al., ICLR 2020); the loss lives in crd/."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from crd.criterion import CRDLoss

from .base import DataNeeds, Distiller, FlagGroup, MethodError, pooled, register_distiller


@register_distiller("crd")
class CRDDistiller(Distiller):
    """CRD on the pooled features: trainable student/teacher embedding heads and a memory bank
    (a buffer, saved in ``state_dict`` for resume) with one row per training sample (``opt.n_data``)."""
    paper_weights = "CRD (Tian et al. 2020): -r 1 -a 0 -b 0.8; CRD+KD: -r 1 -a 1 -b 0.8"

    @classmethod
    def add_arguments(cls, group: FlagGroup) -> None:
        group.add_argument("--feat_dim", default=128, type=int, help="embedding dimension (CC, CRD)")
        group.add_argument("--mode", default="exact", type=str, choices=["exact", "relax"],
                           help="positive of a sample: itself (exact) or a random sample of its class (relax)")
        group.add_argument("--nce_k", default=16384, type=int, help="number of negative samples for NCE")
        group.add_argument("--nce_t", default=0.07, type=float, help="temperature parameter for softmax")
        group.add_argument("--nce_m", default=0.5, type=float, help="momentum for non-parametric updates")

    @classmethod
    def check_options(cls, opt) -> None:
        for flag in ("nce_k", "feat_dim"):
            if getattr(opt, flag) <= 0:
                raise MethodError(f"--{flag} must be positive, got {getattr(opt, flag)}")

    @classmethod
    def data_needs(cls, opt) -> DataNeeds:
        return DataNeeds(contrast_k=opt.nce_k, contrast_mode=opt.mode)

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        crd_opt = SimpleNamespace(s_dim=pooled(feat_s).shape[1], t_dim=pooled(feat_t).shape[1],
                                  feat_dim=opt.feat_dim, nce_k=opt.nce_k, nce_t=opt.nce_t, nce_m=opt.nce_m,
                                  n_data=opt.n_data)
        self.crd = CRDLoss(crd_opt)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.crd.embed_s, self.crd.embed_t]

    def snapshot(self, batch) -> Callable[[], None]:
        """The bank rows a forward on ``batch`` overwrites (not the whole banks)."""
        return self.crd.snapshot(self._indices(batch))

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        loss = self.crd(pooled(feat_s), pooled(feat_t), self._indices(batch), batch.contrast_idx)
        return loss.reshape(())

    @staticmethod
    def _indices(batch) -> torch.Tensor:
        if batch.indices is None:
            raise ValueError("--distill crd needs the dataset index of every sample (Batch.indices) to "
                             "address its memory bank; use the instance/sample CIFAR-100 loader")
        return batch.indices
