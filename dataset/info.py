"""What the scripts need to know about a dataset, in one place: classes, image shape, normalisation, the
augmentation, and the model zoo its networks come from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn
from torchvision import transforms

from models import model_dict


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # the --dataset value
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W) of a network input
    mean: tuple[float, ...]  # per channel, for Normalize
    std: tuple[float, ...]
    crop_padding: int  # train augmentation: RandomCrop(H, padding) + horizontal flip
    models: dict[str, Callable[..., nn.Module]]  # --model/--model_s/--model_t choices

    def train_transform(self) -> transforms.Compose:
        return transforms.Compose([
            transforms.RandomCrop(self.image_shape[1], padding=self.crop_padding),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ])

    def test_transform(self) -> transforms.Compose:
        return transforms.Compose([transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])


CIFAR100 = DatasetInfo(name="cifar100", num_classes=100, image_shape=(3, 32, 32),
                       mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761), crop_padding=4,
                       models=model_dict)

DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (CIFAR100,)}
