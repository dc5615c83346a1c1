"""CRD: Contrastive Representation Distillation (Tian et al., ICLR 2020); the loss lives in crd/."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from crd.criterion import CRDLoss

from .base import Distiller, pooled, register_distiller


@register_distiller("crd")
class CRDDistiller(Distiller):
    """CRD on the pooled features: trainable student/teacher embedding heads and a memory bank
    (a buffer, saved in ``state_dict`` for resume) with one row per training sample (``opt.n_data``)."""

    def __init__(self, opt, feat_s, feat_t):
        super().__init__(opt, feat_s, feat_t)
        crd_opt = SimpleNamespace(s_dim=pooled(feat_s).shape[1], t_dim=pooled(feat_t).shape[1],
                                  feat_dim=opt.feat_dim, nce_k=opt.nce_k, nce_t=opt.nce_t, nce_m=opt.nce_m,
                                  n_data=opt.n_data)
        self.crd = CRDLoss(crd_opt)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.crd.embed_s, self.crd.embed_t]

    def forward(self, feat_s, feat_t, logit_s, logit_t, batch) -> torch.Tensor:
        if batch.indices is None:
            raise ValueError("--distill crd needs the dataset index of every sample (Batch.indices) to "
                             "address its memory bank; use the instance/sample CIFAR-100 loader")
        loss = self.crd(pooled(feat_s), pooled(feat_t), batch.indices, batch.contrast_idx)
        return loss.reshape(())
