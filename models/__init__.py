"""The model zoo: importing a family module registers its factories in ``model_dict`` (CIFAR) or
``imagenet_model_dict``."""
# Import order is the order of ``model_dict`` (and of the scripts' --model choices).
from . import resnet, resnetv2, wrn, vgg, mobilenetv2, ShuffleNetv1, ShuffleNetv2, imagenet  # noqa: F401
from .registry import imagenet_model_dict, model_dict, register_model

__all__ = ["imagenet_model_dict", "model_dict", "register_model"]
