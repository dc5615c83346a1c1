"""Distill a teacher into a student on CIFAR-100 with one of the benchmark's methods (--distill)."""
from __future__ import annotations

import argparse
import sys

from helper.distributed import sum_across_ranks
from helper.engine import Job, run
from helper.objectives import DistillObjective
from helper.options import (add_common_args, check_common, get_teacher_name, make_run_folders, model_names,
                            override_small_lr)
from helper.setup import (SetupError, build_data, build_model, cli, maybe_compile, prepare_run,
                          to_channels_last)
from helper.util import LOG


def distill_names() -> list[str]:
    from distiller_zoo.base import DISTILLERS
    import distiller_zoo  # noqa: F401  (fills the registry)

    return list(DISTILLERS)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("argument for training")
    add_common_args(parser)
    parser.add_argument("--init_epochs", type=int, default=30, help="init training for two-stage methods")
    parser.add_argument("--model_s", type=str, default="resnet8", choices=model_names())
    parser.add_argument("--path_t", type=str, default=None, help="teacher model snapshot")
    parser.add_argument("--model_t", type=str, default=None, choices=model_names(),
                        help="teacher architecture (default: parsed from --path_t's folder name)")
    parser.add_argument("--distill", type=str, default="kd", choices=distill_names())
    parser.add_argument("--trial", type=str, default="1", help="trial id")
    parser.add_argument("-r", "--gamma", type=float, default=1, help="weight for classification")
    parser.add_argument("-a", "--alpha", type=float, default=None, help="weight balance for KD")
    parser.add_argument("-b", "--beta", type=float, default=None, help="weight balance for other losses")
    parser.add_argument("--kd_T", type=float, default=4, help="temperature for KD distillation")
    parser.add_argument("--feat_dim", default=128, type=int, help="feature dimension")
    parser.add_argument("--mode", default="exact", type=str, choices=["exact", "relax"])
    parser.add_argument("--nce_k", default=16384, type=int, help="number of negative samples for NCE")
    parser.add_argument("--nce_t", default=0.07, type=float, help="temperature parameter for softmax")
    parser.add_argument("--nce_m", default=0.5, type=float, help="momentum for non-parametric updates")
    parser.add_argument("--hint_layer", default=2, type=int, choices=[0, 1, 2, 3, 4])
    return parser


def parse_option(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_args_parser()
    opt = parser.parse_args(argv)
    check_common(parser, opt)
    if opt.path_t is None:
        parser.error("--path_t is required: a teacher checkpoint such as "
                     "./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth "
                     "(get the paper's teachers with scripts/fetch_pretrained_teachers.sh)")
    if opt.alpha is None:
        parser.error("-a/--alpha (weight of the KL term) is required; the paper uses -a 0, "
                     "or -a 0.9 for KD and -a 1 for CRD+KD")
    if opt.beta is None:
        if opt.distill != "kd":
            parser.error(f"-b/--beta (weight of the {opt.distill} term) is required; "
                         f"scripts/run_cifar_distill.sh lists the paper's values")
        opt.beta = 0.0
    if opt.nce_k <= 0 or opt.feat_dim <= 0:
        parser.error("--nce_k and --feat_dim must be positive")
    if opt.model_t is None:
        opt.model_t = get_teacher_name(opt.path_t)
        if opt.model_t not in model_names():
            parser.error(f"cannot tell the teacher architecture from --path_t {opt.path_t!r} (its folder "
                         f"name gives {opt.model_t!r}); name it with --model_t, e.g. --model_t resnet32x4")
    opt.lr_override = override_small_lr(opt, opt.model_s)
    opt.model_name = (f"S:{opt.model_s}_T:{opt.model_t}_{opt.dataset}_{opt.distill}_r:{opt.gamma}"
                      f"_a:{opt.alpha}_b:{opt.beta}_{opt.trial}")
    make_run_folders(opt, "student_model", "student_tensorboards")
    return opt


def load_teacher(opt, device):
    from helper.checkpoint import load_model_weights

    LOG.info("==> loading teacher model")
    model_t = build_model(opt.model_t, 100, device)
    load_model_weights(model_t, opt.path_t, opt.model_t, map_location=device)
    LOG.info("==> done")
    return model_t


@cli
def main(argv: list[str] | None = None) -> None:
    from distiller_zoo.base import build_distiller

    opt = parse_option(argv)
    device = prepare_run(opt)
    crd_k = opt.nce_k if opt.distill == "crd" else None
    train_loader, test_loader, n_data = build_data(opt, device, instance=True, crd_k=crd_k)
    if crd_k is not None and crd_k >= n_data:
        raise SetupError(f"--nce_k {crd_k} is too large: CRD draws its negatives from the other samples of "
                         f"the training set, which holds {n_data} images in {opt.data_folder}; use --nce_k "
                         f"below {n_data} (the paper uses 16384 of CIFAR-100's 50000)")
    opt.n_data = n_data
    model_t = load_teacher(opt, device)
    model_s = build_model(opt.model_s, 100, device)
    try:
        distiller = build_distiller(opt, model_s, model_t).to(device)
    except (ValueError, NotImplementedError) as e:
        raise SetupError(f"--distill {opt.distill} with {opt.model_t} -> {opt.model_s}: {e}") from None
    to_channels_last(opt, model_s, model_t)  # not the distiller: its modules see loss_inputs (NCHW) features
    objective = DistillObjective(maybe_compile(opt, model_s), maybe_compile(opt, model_t), distiller, opt)
    job = Job(opt=opt, kind="student", device=device, model=model_s, objective=objective, train_loader=train_loader,
              test_loader=test_loader, teacher=model_t, distiller=distiller, model_name=opt.model_s,
              is_main=opt.is_main, reduce=sum_across_ranks)
    run(job)


if __name__ == "__main__":
    sys.exit(main())
