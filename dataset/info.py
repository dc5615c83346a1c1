"""What the scripts need to know about a dataset, in one place: classes, image shape, normalisation, the
augmentation, and the model zoo its networks come from."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn
from torchvision import transforms

from models import imagenet_model_dict, model_dict


@dataclass(frozen=True)
class DatasetInfo:
    name: str  # the --dataset value
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W) of a network input
    mean: tuple[float, ...]  # per channel, for Normalize
    std: tuple[float, ...]
    # Train augmentation + horizontal flip: RandomCrop(H, crop_padding), or (None) RandomResizedCrop(H).
    crop_padding: int | None
    models: dict[str, Callable[..., nn.Module]]  # --model/--model_s/--model_t choices
    test_resize: int | None = None  # test images: Resize(test_resize) + CenterCrop(H); None: as stored
    source: str = "cifar"  # how the files are read: "cifar" (pickles) or "imagefolder" (<split>/<class>/*.JPEG)
    backends: tuple[str, ...] = ("tensor", "torchvision")  # the --data_backend values it can be read with
    # Defaults of this dataset's recipe, by option name (a flag given on the command line wins).
    recipe: dict[str, Any] = field(default_factory=dict)
    # The recipe's learning rate is for this many images per step, and is scaled linearly with the global
    # batch (--batch_size x processes) when --learning_rate is not given; None: no scaling.
    lr_reference_batch: int | None = None

    def resized(self, size: int | None) -> "DatasetInfo":
        """This dataset at network input size ``size`` (--image_size; None: its own), the test resize scaled."""
        if size is None or size == self.image_shape[1]:
            return self
        test_resize = None if self.test_resize is None else round(self.test_resize * size / self.image_shape[1])
        return dataclasses.replace(self, image_shape=(self.image_shape[0], size, size), test_resize=test_resize)

    def train_transform(self) -> transforms.Compose:
        size = self.image_shape[1]
        crop = (transforms.RandomResizedCrop(size) if self.crop_padding is None
                else transforms.RandomCrop(size, padding=self.crop_padding))
        return transforms.Compose([
            crop,
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ])

    def test_transform(self) -> transforms.Compose:
        resize = [] if self.test_resize is None else [transforms.Resize(self.test_resize),
                                                      transforms.CenterCrop(self.image_shape[1])]
        return transforms.Compose([*resize, transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])


CIFAR100 = DatasetInfo(name="cifar100", num_classes=100, image_shape=(3, 32, 32),
                       mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761), crop_padding=4,
                       models=model_dict)

# The standard PyTorch ImageNet recipe, as the CRD authors and mdistiller train their ImageNet pairs.
IMAGENET = DatasetInfo(name="imagenet", num_classes=1000, image_shape=(3, 224, 224),
                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_padding=None,
                       models=imagenet_model_dict, test_resize=256, source="imagefolder",
                       backends=("torchvision", "dali"),
                       recipe=dict(epochs=100, learning_rate=0.1, lr_decay_epochs="30,60,90", weight_decay=1e-4,
                                   momentum=0.9, batch_size=256, nce_k=16384, feat_dim=128, data_backend="torchvision"),
                       lr_reference_batch=256)

DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (CIFAR100, IMAGENET)}


def dataset_info(opt) -> DatasetInfo:
    """``opt.dataset``'s description at the run's input size (``--image_size``, where given)."""
    return DATASETS[opt.dataset].resized(getattr(opt, "image_size", None))
