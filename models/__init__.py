"""The model zoo: importing a family module registers its factories in ``model_dict``."""
# Import order is the order of ``model_dict`` (and of the scripts' --model choices).
from . import resnet, resnetv2, wrn, vgg, mobilenetv2, ShuffleNetv1, ShuffleNetv2  # noqa: F401
from .registry import model_dict, register_model

__all__ = ["model_dict", "register_model"]
