"""Builders of what a run trains: models, loaders, and the (optionally compiled) runners of the networks."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from dataset import DATASETS, build_loaders
from distiller_zoo import DataNeeds
from cli.weights import resolve_teacher_path
from helper.checkpoint import load_model_weights
from helper.distributed import check_global_batch
from helper.errors import UserError
from helper.util import LOG


def build_model(opt, name: str, device: torch.device) -> nn.Module:
    """Network ``name`` of ``opt.dataset``'s model zoo, with its number of classes, on ``device``."""
    info = DATASETS[opt.dataset]
    if name not in info.models:
        raise UserError(f"unknown model {name!r} for --dataset {opt.dataset}; choose one of: {', '.join(info.models)}")
    return info.models[name](num_classes=info.num_classes).to(device)


def load_teacher(opt, device: torch.device) -> nn.Module:
    """``--model_t`` with the weights of ``--path_t``."""
    LOG.info("==> loading teacher model")
    model_t = build_model(opt, opt.model_t, device)
    load_model_weights(model_t, resolve_teacher_path(opt.path_t), opt.model_t, map_location=device)
    LOG.info("==> done")
    return model_t


def build_data(opt, device: torch.device, needs: DataNeeds | None = None):
    """(train_loader, test_loader, n_data). ``needs``: a student's method's (train batches then carry
    dataset indices, and contrast indices when it asks); None for a teacher."""
    loaders = build_loaders(
        opt.data_folder, opt.data_backend, opt.batch_size, opt.num_workers, device,
        instance=needs is not None, crd_k=needs.contrast_k if needs else None,
        crd_mode=needs.contrast_mode if needs else "exact", seed=opt.seed,
        rank=getattr(opt, "rank", 0), world_size=getattr(opt, "world_size", 1), dataset=opt.dataset,
        image_size=getattr(opt, "image_size", None))
    check_global_batch(opt, loaders[2])
    return loaders


def to_channels_last(opt, *models: nn.Module) -> None:
    """Under --channels_last, store every 4-D parameter and buffer of ``models`` as channels_last (NHWC)."""
    if opt.channels_last:
        for model in models:
            model.to(memory_format=torch.channels_last)


def _tensors(out) -> list[torch.Tensor]:
    """The tensors of a model output: logits, or ``(features, logits)``."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for part in out for t in _tensors(part)]
    return []


class CompiledModule:
    """Runs ``module`` through torch.compile; if compiling fails (when wrapping, at a call, or in the first
    backward) it warns once and runs ``module`` eagerly from then on.

    Only a runner for the objectives: train()/eval() reach ``module``, and checkpoints save ``module``
    itself, so state_dict keys keep their names (no ``_orig_mod.`` prefix).
    """

    def __init__(self, module: nn.Module, mode: str = "default", backend: str | Callable = "inductor"):
        self.module = module
        self.compiled: Callable | None = None
        self.verified = False  # one call (with its backward, under grad) went through the compiled code
        try:
            self.compiled = torch.compile(module, mode=mode, backend=backend)
        except Exception as e:  # compile support varies by platform/version
            self._fall_back(e)

    def train(self, mode: bool = True) -> "CompiledModule":
        self.module.train(mode)
        return self

    def eval(self) -> "CompiledModule":
        return self.train(False)

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.module(*args, **kwargs)
        if self.verified:
            try:
                return self.compiled(*args, **kwargs)
            except torch._dynamo.exc.TorchDynamoException as e:  # a recompilation (new shape/mode) failed
                self._fall_back(e)
                return self.module(*args, **kwargs)
        buffers = [b.detach().clone() for b in self.module.buffers()]
        try:
            out = self.compiled(*args, **kwargs)
            if torch.is_grad_enabled():
                self._compile_backward(out)
        except Exception as e:  # first call: any failure means the compiled path cannot be trusted
            with torch.no_grad():  # undo the BatchNorm statistics update of a half-finished compiled call
                for buffer, saved in zip(self.module.buffers(), buffers):
                    buffer.copy_(saved)
            self._fall_back(e)
            return self.module(*args, **kwargs)
        self.verified = True
        return out

    def _compile_backward(self, out) -> None:
        """The backward graph is compiled lazily, at the first backward: run it now (zero gradients,
        nothing accumulated, the graph kept for the real backward) so that a failure is caught here."""
        outputs = [t for t in _tensors(out) if t.requires_grad]
        params = [p for p in self.module.parameters() if p.requires_grad]
        if outputs and params:
            torch.autograd.grad(outputs, params, grad_outputs=[torch.zeros_like(t) for t in outputs],
                                retain_graph=True, allow_unused=True)

    def _fall_back(self, error: Exception) -> None:
        self.compiled = None
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        LOG.warning(f"--compile: torch.compile failed for {type(self.module).__name__} "
                    f"({type(error).__name__}: {first_line}); running it eagerly")


def maybe_compile(opt, model: nn.Module) -> nn.Module | CompiledModule:
    """``model`` itself, or under --compile [MODE] a CompiledModule running it (eager fallback on failure)."""
    if not opt.compile:
        return model
    return CompiledModule(model, mode=opt.compile)


