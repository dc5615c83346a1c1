"""Datasets (each described once in dataset/info.py) and CIFAR-100 loading: the original torchvision pipeline
and a device-resident fast path, both yielding Batch."""
from dataset.batch import Batch
from dataset.cifar100 import (CIFAR100Instance, CIFAR100InstanceSample, DatasetError, ensure_cifar100,
                              get_cifar100_dataloaders, get_cifar100_dataloaders_sample)
from dataset.info import DATASETS, DatasetInfo
from dataset.loaders import BACKENDS, build_loaders

__all__ = ["BACKENDS", "DATASETS", "Batch", "CIFAR100Instance", "CIFAR100InstanceSample", "DatasetError",
           "DatasetInfo", "build_loaders", "ensure_cifar100", "get_cifar100_dataloaders",
           "get_cifar100_dataloaders_sample"]
