"""CIFAR-100 loading: the original torchvision pipeline and a device-resident fast path, both yielding Batch."""
from dataset.batch import Batch
from dataset.cifar100 import (CIFAR100Instance, CIFAR100InstanceSample, DatasetError, ensure_cifar100,
                              get_cifar100_dataloaders, get_cifar100_dataloaders_sample)
from dataset.loaders import BACKENDS, build_loaders

__all__ = ["BACKENDS", "Batch", "CIFAR100Instance", "CIFAR100InstanceSample", "DatasetError", "build_loaders",
           "ensure_cifar100", "get_cifar100_dataloaders", "get_cifar100_dataloaders_sample"]
