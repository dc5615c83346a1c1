"""The one batch type every loader yields and every loop consumes."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, 32, 32) float32, normalised
    labels: torch.Tensor  # (B,) int64
    indices: torch.Tensor | None = None  # (B,) int64 dataset indices (CRD memory rows)
    contrast_idx: torch.Tensor | None = None  # (B, K+1) int64, column 0 = positive

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "Batch":
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(move(self.images), move(self.labels), move(self.indices), move(self.contrast_idx))

    def __len__(self) -> int:
        return self.labels.shape[0]
