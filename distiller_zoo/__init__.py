"""Distillation losses (original names) and the ``--distill`` method registry.

Importing the package imports every module in this folder, so ``DISTILLERS`` holds every method and the
losses keep the original's import path (``from distiller_zoo import DistillKL``): a new method is one file.
"""
import importlib
import inspect
import pkgutil

from .base import (DISTILLERS, DataNeeds, Distiller, MethodError, add_method_arguments, build_distiller,
                   register_distiller)

__all__ = ["DISTILLERS", "DataNeeds", "Distiller", "MethodError", "add_method_arguments", "build_distiller",
           "register_distiller"]

for _info in pkgutil.iter_modules(__path__):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    # Export the classes each method file defines (the original's loss classes among them).
    for _name, _value in vars(_module).items():
        if (inspect.isclass(_value) and _value.__module__ == _module.__name__ and not _name.startswith("_")
                and _name not in __all__):
            globals()[_name] = _value
            __all__.append(_name)
