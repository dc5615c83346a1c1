"""Contrastive Representation Distillation (Tian et al., ICLR 2020): loss and memory bank."""
from .criterion import ContrastLoss, CRDLoss, Embed, Normalize
from .memory import AliasMethod, ContrastMemory

__all__ = ["AliasMethod", "ContrastLoss", "ContrastMemory", "CRDLoss", "Embed", "Normalize"]
