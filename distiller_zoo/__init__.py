"""Distillation losses (original names) and the ``--distill`` method registry.

Importing the package imports every method file, so ``DISTILLERS`` is complete.
"""
from .AB import ABLoss
from .AT import Attention
from . import CRD  # noqa: F401  (registers --distill crd; the loss itself lives in crd/)
from .base import DISTILLERS, Distiller, build_distiller, register_distiller
from .CC import Correlation
from .FitNet import HintLoss
from .FSP import FSP
from .FT import FactorTransfer
from .KD import DistillKL
from .KDSVD import KDSVD
from .NST import NSTLoss
from .PKT import PKT
from .RKD import RKDLoss
from .SP import Similarity
from .VID import VIDLoss

__all__ = ["ABLoss", "Attention", "Correlation", "DISTILLERS", "DistillKL", "Distiller",
           "FSP", "FactorTransfer", "HintLoss", "KDSVD", "NSTLoss", "PKT", "RKDLoss", "Similarity", "VIDLoss",
           "build_distiller", "register_distiller"]
