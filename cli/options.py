"""Command-line options shared by train_teacher.py and train_student.py (same flags as the original)."""
from __future__ import annotations

import argparse
import difflib
import os
import re
import secrets
import textwrap
from pathlib import Path

from cli.weights import torchvision_arch
from dataset import BACKENDS, DATASETS
from helper.distributed import choose_device, torchrun_env
from helper.errors import UserError
from helper.util import parse_decay_epochs

# Students/teachers the original forces to lr 0.01 (and the log says so).
SMALL_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
# torch.compile modes accepted by --compile (a bare --compile means "default").
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help with each flag's default, and the line breaks of a help text kept (the method list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        if shown and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text

    def _split_lines(self, text: str, width: int) -> list[str]:
        lines = []
        for paragraph in text.splitlines():
            # An indented "  name  text" line (the method list) wraps under its text.
            hanging = re.match(r"\s+\S+\s+", paragraph) if paragraph[:1].isspace() else None
            lines += textwrap.wrap(paragraph, width, subsequent_indent=" " * (hanging.end() if hanging else 0)) or [""]
        return lines


class ScriptParser(argparse.ArgumentParser):
    """The scripts' parser: named after the script, every default in --help, and a bad flag as one line
    (``error: <the flag, what is wrong, the fix>; see python <script> --help``, exit 2) instead of the usage."""

    def __init__(self, prog: str, **kwargs):
        super().__init__(prog=prog, formatter_class=HelpFormatter, **kwargs)

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self._unrecognized(extras))
        return namespace

    def _unrecognized(self, extras: list[str]) -> str:
        """'unrecognized arguments: --modle_s resnet8 (did you mean --model_s?)'."""
        flags = [flag for action in self._actions for flag in action.option_strings]
        hints = []
        for word in extras:
            if word.startswith("-"):
                hints += difflib.get_close_matches(word.split("=")[0], flags, n=1)
        hint = f" (did you mean {', '.join(dict.fromkeys(hints))}?)" if hints else ""
        return f"unrecognized arguments: {' '.join(extras)}{hint}"

    def error(self, message: str):
        self.exit(2, f"error: {message}; see python {self.prog} --help\n")


def model_names() -> list[str]:
    """Every dataset's networks (build_model checks the one of --dataset)."""
    return list(dict.fromkeys(name for info in DATASETS.values() for name in info.models))


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags both scripts share: the original's optimisation/bookkeeping flags plus the new ones."""
    parser.add_argument("--print_freq", type=int, default=100,
                        help="when the output is not a terminal (a log file, CI): a progress line every N "
                             "batches; on a terminal a live progress bar instead")
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
    parser.add_argument("--dataset", type=str, default="cifar100", choices=list(DATASETS),
                        help="dataset; imagenet brings its recipe's defaults (--epochs 100 --learning_rate 0.1 "
                             "per 256 images per step, scaled linearly with the global batch --lr_decay_epochs "
                             "30,60,90 --weight_decay 1e-4 --batch_size 256 --data_backend torchvision); flags "
                             "given on the command line win")
    # New, all optional.
    parser.add_argument("--data_folder", type=str, default="./data",
                        help="folder holding cifar-100-python/ (downloaded there when missing); imagenet: "
                             "the folder holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    parser.add_argument("--data_backend", type=str, default="tensor", choices=list(BACKENDS),
                        help="tensor: dataset on the device, batched augmentation (fast, CIFAR); "
                             "torchvision: the original PIL + DataLoader pipeline; dali: ImageNet JPEGs decoded "
                             "on the GPU by NVIDIA DALI (optional package)")
    parser.add_argument("--image_size", type=int, default=None,
                        help="imagenet: network input size (default 224; validation resizes to 256/224 of it); "
                             "smaller sizes make quick tests")
    parser.add_argument("--device", type=str, default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and recorded)")
    parser.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower)")
    parser.add_argument("--resume", type=str, default=None,
                        help="resume from a state file, or 'auto' = this run folder's latest state")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in a run folder that holds an earlier run, deleting its files "
                             "(without it, such a folder is refused)")
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
    """Validate and derive the shared options; errors go through parser.error (one line, exit 2)."""
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
    check_data_options(parser, opt)
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
    if opt.overwrite and opt.resume:
        parser.error("--overwrite deletes the run that --resume would continue: give only one of them")
    if not opt.dist_timeout > 0:
        parser.error(f"--dist_timeout must be positive (minutes), got {opt.dist_timeout}")
    if opt.sync_bn and device.type != "cuda":
        parser.error("--sync_bn needs CUDA devices (SyncBatchNorm has no CPU implementation)")


def check_data_options(parser: argparse.ArgumentParser, opt: argparse.Namespace) -> None:
    """--data_backend and --image_size fit --dataset."""
    info = DATASETS[opt.dataset]
    for flag in ("model", "model_s", "model_t"):
        name = getattr(opt, flag, None)
        if name is not None and name not in info.models:
            parser.error(f"--{flag} {name} is not among the {opt.dataset} networks; choose one of "
                         f"{', '.join(info.models)}")
    if opt.data_backend not in info.backends:
        parser.error(f"--data_backend {opt.data_backend} cannot read --dataset {opt.dataset}; use "
                     f"{' or '.join(info.backends)}")
    if getattr(opt, "image_size", None) is not None:
        if info.crop_padding is not None:
            parser.error(f"--image_size is for --dataset imagenet; {opt.dataset} images are "
                         f"{info.image_shape[1]}x{info.image_shape[2]} (leave --image_size out)")
        if opt.image_size < 32:
            parser.error(f"--image_size must be at least 32 (the networks downsample 32 times), got {opt.image_size}")


def parse_with_recipe(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with ``--dataset``'s recipe (dataset/info.py) as the defaults: a flag on the command line
    wins. Without --learning_rate, a recipe with a reference batch scales its rate linearly with the global
    batch (--batch_size x processes under torchrun)."""
    opt = parser.parse_args(argv)
    info = DATASETS[opt.dataset]
    if not info.recipe:
        return opt
    dests = {action.dest for action in parser._actions}
    defaults = {name: value for name, value in info.recipe.items() if name in dests}
    scaled = info.lr_reference_batch is not None and "learning_rate" in defaults
    if scaled:
        defaults["learning_rate"] = None  # tells "not given" apart from any number
    parser.set_defaults(**defaults)
    opt = parser.parse_args(argv)
    if scaled and opt.learning_rate is None:
        env = torchrun_env()
        global_batch = opt.batch_size * (env[2] if env is not None else 1)
        opt.learning_rate = info.recipe["learning_rate"] * global_batch / info.lr_reference_batch
    return opt


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
    """Architecture from the checkpoint's folder: '.../wrn_40_2_vanilla/ckpt.pth' -> 'wrn_40_2'; torchvision's
    weights name it themselves ('torchvision:ResNet34_Weights.IMAGENET1K_V1', 'resnet34-b627a593.pth')."""
    arch = torchvision_arch(path)
    if arch is not None:
        return arch
    segments = Path(path).parent.name.split("_")
    if segments[0] != "wrn":
        return segments[0]
    return "_".join(segments[:3])
