"""Command-line options shared by train_teacher.py and train_student.py (same flags as the original)."""
from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from dataset import DATASETS
from helper.distributed import choose_device, torchrun_env
from helper.errors import UserError
from helper.util import parse_decay_epochs

# Students/teachers the original forces to lr 0.01 (and the log says so).
SMALL_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
# torch.compile modes accepted by --compile (a bare --compile means "default").
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def model_names() -> list[str]:
    """Every dataset's networks (build_model checks the one of --dataset)."""
    return list(dict.fromkeys(name for info in DATASETS.values() for name in info.models))


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags both scripts share: the original's optimisation/bookkeeping flags plus the new ones."""
    parser.add_argument("--print_freq", type=int, default=100, help="print frequency (batches)")
    parser.add_argument("--tb_freq", type=int, default=500,
                        help="accepted for compatibility with the original's command lines and ignored: "
                             "TensorBoard scalars are written once per epoch")
    parser.add_argument("--save_freq", type=int, default=40, help="save a ckpt_epoch_N.pth every N epochs")
    parser.add_argument("--batch_size", type=int, default=64, help="batch size (per process)")
    parser.add_argument("--num_workers", type=int, default=8, help="loader workers (torchvision backend)")
    parser.add_argument("--epochs", type=int, default=240, help="number of training epochs")
    parser.add_argument("--learning_rate", type=float, default=0.05, help="learning rate")
    parser.add_argument("--lr_decay_epochs", type=str, default="150,180,210",
                        help="where to decay lr, can be a list")
    parser.add_argument("--lr_decay_rate", type=float, default=0.1, help="decay rate for learning rate")
    parser.add_argument("--weight_decay", type=float, default=5e-4, help="weight decay")
    parser.add_argument("--momentum", type=float, default=0.9, help="momentum")
    parser.add_argument("--dataset", type=str, default="cifar100", choices=list(DATASETS), help="dataset")
    # New, all optional.
    parser.add_argument("--data_folder", type=str, default="./data",
                        help="folder holding cifar-100-python/ (downloaded there when missing)")
    parser.add_argument("--data_backend", type=str, default="tensor", choices=["tensor", "torchvision"],
                        help="tensor: dataset on the device, batched augmentation (fast); "
                             "torchvision: the original PIL + DataLoader pipeline")
    parser.add_argument("--device", type=str, default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and recorded)")
    parser.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower)")
    parser.add_argument("--resume", type=str, default=None,
                        help="resume from a state file, or 'auto' = this run folder's latest state")
    parser.add_argument("--save_root", type=str, default="./save", help="root of all output folders")
    # Speed.
    parser.add_argument("--amp", action="store_true", help="mixed precision (bf16 if supported, else fp16)")
    parser.add_argument("--channels_last", action="store_true", help="channels_last memory format")
    parser.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES,
                        help="torch.compile student and teacher (eager fallback, with a warning, where it "
                             "fails); a value picks the mode: reduce-overhead adds CUDA graphs (CUDA only)")
    parser.add_argument("--skip_nonfinite", action="store_true",
                        help="skip batches whose loss is NaN/inf instead of stopping")
    # Several processes (torchrun --nproc_per_node N ...).
    parser.add_argument("--sync_bn", action="store_true",
                        help="under torchrun: SyncBatchNorm in the trained networks (CUDA only)")
    parser.add_argument("--dist_timeout", type=float, default=30,
                        help="under torchrun: minutes a process waits for the others before giving up")


def check_common(parser: argparse.ArgumentParser, opt: argparse.Namespace) -> None:
    """Validate and derive the shared options; errors go through parser.error (usage + message, exit 2)."""
    for flag in ("batch_size", "epochs", "print_freq", "save_freq"):
        if getattr(opt, flag) <= 0:
            parser.error(f"--{flag} must be positive, got {getattr(opt, flag)}")
    for flag in ("learning_rate",):
        if not getattr(opt, flag) > 0:
            parser.error(f"--{flag} must be positive, got {getattr(opt, flag)}")
    if getattr(opt, "init_epochs", 0) < 0:
        parser.error(f"--init_epochs must be >= 0, got {opt.init_epochs}")
    if opt.num_workers < 0:
        parser.error(f"--num_workers must be >= 0, got {opt.num_workers}")
    try:
        opt.lr_decay_epochs = parse_decay_epochs(opt.lr_decay_epochs)
    except ValueError as e:
        parser.error(str(e))
    env = torchrun_env()
    try:
        device = choose_device(opt.device, local_rank=env[1] if env is not None else None)
    except UserError as e:
        parser.error(str(e))
    opt.device = str(device)
    if opt.seed is None:
        opt.seed = secrets.randbelow(2**31)
    if not opt.dist_timeout > 0:
        parser.error(f"--dist_timeout must be positive (minutes), got {opt.dist_timeout}")
    if opt.sync_bn and device.type != "cuda":
        parser.error("--sync_bn needs CUDA devices (SyncBatchNorm has no CPU implementation)")


def override_small_lr(opt: argparse.Namespace, model: str) -> str | None:
    """The original silently uses lr 0.01 for MobileNetV2/ShuffleNets; we keep it and say so."""
    if model in SMALL_LR_MODELS and opt.learning_rate != 0.01:
        old, opt.learning_rate = opt.learning_rate, 0.01
        return f"==> {model}: learning rate set to 0.01 (was {old}), as in the original"
    return None


def make_run_folders(opt: argparse.Namespace, model_dir: str, tb_dir: str) -> None:
    opt.model_path = os.path.join(opt.save_root, model_dir)
    opt.tb_path = os.path.join(opt.save_root, tb_dir)
    opt.save_folder = os.path.join(opt.model_path, opt.model_name)
    opt.tb_folder = os.path.join(opt.tb_path, opt.model_name)


def get_teacher_name(path: str) -> str:
    """Architecture from the checkpoint's folder: '.../wrn_40_2_vanilla/ckpt.pth' -> 'wrn_40_2'."""
    segments = Path(path).parent.name.split("_")
    if segments[0] != "wrn":
        return segments[0]
    return "_".join(segments[:3])
