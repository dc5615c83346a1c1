"""Linear-probe heads on frozen features (not used by the training scripts)."""
from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor


class LinearClassifier(nn.Module):
    """Linear probe, as in linear evaluation of representations (e.g. Tian et al., CRD, ICLR 2020)."""

    def __init__(self, dim_in: int, n_label: int = 10):
        super().__init__()
        self.net = nn.Linear(dim_in, n_label)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class NonLinearClassifier(nn.Module):
    """One-hidden-layer probe (200 units, dropout, BN) for CRD-style evaluation (Tian et al., 2020)."""

    def __init__(self, dim_in: int, n_label: int = 10, p: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim_in, 200),
            nn.Dropout(p=p),
            nn.BatchNorm1d(200),
            nn.ReLU(inplace=True),
            nn.Linear(200, n_label),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
