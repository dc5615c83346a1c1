"""Distill a teacher into a student with one of the benchmark's methods (--distill)."""
from __future__ import annotations

import argparse
import sys

from cli.app import cli, prepare_run
from cli.build import build_data, build_model, load_teacher, maybe_compile, to_channels_last
from cli.options import (ScriptParser, add_common_args, check_common, get_teacher_name, make_run_folders,
                         model_names, override_small_lr, parse_with_recipe)
from distiller_zoo import DISTILLERS, MethodError, add_method_arguments, build_distiller
from distiller_zoo.base import methods_help
from helper.distributed import sum_across_ranks
from helper.engine import Job, run
from helper.objectives import DistillObjective


def get_args_parser() -> argparse.ArgumentParser:
    parser = ScriptParser(
        "train_student.py", description=__doc__,
        usage="%(prog)s --path_t CHECKPOINT --distill METHOD --model_s MODEL -a ALPHA [-b BETA] [options]",
        epilog="The total loss is gamma*CE + alpha*KL + beta*(the method's term). Example (the paper's CRD):\n"
               "  python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth \\\n"
               "      --distill crd --model_s resnet8x4 -a 0 -b 0.8 --trial 1")
    add_common_args(parser)
    parser.add_argument("--init_epochs", type=int, default=30,
                        help="epochs of the init stage of abound, factor and fsp, before distillation")
    parser.add_argument("--model_s", type=str, default="resnet8", choices=model_names(), metavar="MODEL",
                        help=f"student architecture: {', '.join(model_names())}")
    parser.add_argument("--path_t", type=str, default=None, metavar="CHECKPOINT",
                        help="(required) the teacher's checkpoint, e.g. "
                             "./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth "
                             "(scripts/fetch_pretrained_teachers.sh fetches the paper's teachers)")
    parser.add_argument("--model_t", type=str, default=None, choices=model_names(), metavar="MODEL",
                        help="teacher architecture (default: read from --path_t's folder name, "
                             "e.g. resnet32x4_vanilla)")
    parser.add_argument("--distill", type=str, default="kd", choices=sorted(DISTILLERS), metavar="METHOD",
                        help="distillation method (default: %(default)s). Each with its paper and the weights "
                             "of its published CIFAR-100 runs (scripts/run_cifar_distill.sh runs them all):\n"
                             + methods_help())
    parser.add_argument("--trial", type=str, default="1", help="trial id (the run folder's last part)")
    parser.add_argument("-r", "--gamma", type=float, default=1, help="weight of the cross-entropy term")
    parser.add_argument("-a", "--alpha", type=float, default=None,
                        help="(required) weight of the KL term: 0.9 for KD, 1 for CRD+KD, 0 for the others "
                             "in the paper")
    parser.add_argument("-b", "--beta", type=float, default=None,
                        help="(required, except for --distill kd) weight of the method's own term; the "
                             "paper's per method: under --distill")
    parser.add_argument("--kd_T", type=float, default=4, help="temperature of the KL term")
    add_method_arguments(parser)  # each method's own flags, under its name
    return parser


def parse_option(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_args_parser()
    opt = parse_with_recipe(parser, argv)
    check_common(parser, opt)
    method = DISTILLERS[opt.distill]
    if opt.path_t is None:
        parser.error("--path_t is required: a teacher checkpoint such as "
                     "./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth "
                     "(get the paper's teachers with scripts/fetch_pretrained_teachers.sh)")
    if opt.alpha is None:
        parser.error("-a/--alpha (weight of the KL term) is required; the paper uses -a 0, "
                     "or -a 0.9 for KD and -a 1 for CRD+KD")
    if opt.beta is None:
        if method.has_term:
            parser.error(f"-b/--beta (weight of the {opt.distill} term) is required; "
                         f"scripts/run_cifar_distill.sh lists the paper's values")
        opt.beta = 0.0
    try:
        method.check_options(opt)
    except MethodError as e:
        parser.error(str(e))
    if opt.model_t is None:
        opt.model_t = get_teacher_name(opt.path_t)
        if opt.model_t not in model_names():
            parser.error(f"cannot tell the teacher architecture from --path_t {opt.path_t!r} (its folder "
                         f"name gives {opt.model_t!r}); name it with --model_t, e.g. --model_t resnet32x4")
    opt.lr_override = override_small_lr(opt, opt.model_s)
    ls = "_ls" if opt.logit_stand else ""  # DKD+LS and DKD have the same weights: keep their folders apart
    opt.model_name = (f"S:{opt.model_s}_T:{opt.model_t}_{opt.dataset}_{opt.distill}{ls}_r:{opt.gamma}"
                      f"_a:{opt.alpha}_b:{opt.beta}_{opt.trial}")
    make_run_folders(opt, "student_model", "student_tensorboards")
    return opt


@cli
def main(argv: list[str] | None = None) -> None:
    opt = parse_option(argv)
    device = prepare_run(opt)
    train_loader, test_loader, opt.n_data = build_data(opt, device, DISTILLERS[opt.distill].data_needs(opt))
    model_t = load_teacher(opt, device)
    model_s = build_model(opt, opt.model_s, device)
    try:
        distiller = build_distiller(opt, model_s, model_t).to(device)
    except MethodError as e:
        raise MethodError(f"--distill {opt.distill} with {opt.model_t} -> {opt.model_s}: {e}") from None
    to_channels_last(opt, model_s, model_t)  # not the distiller: its modules see loss_inputs (NCHW) features
    objective = DistillObjective(maybe_compile(opt, model_s), maybe_compile(opt, model_t), distiller, opt)
    job = Job(opt=opt, kind="student", device=device, model=model_s, objective=objective, train_loader=train_loader,
              test_loader=test_loader, teacher=model_t, distiller=distiller, model_name=opt.model_s,
              is_main=opt.is_main, reduce=sum_across_ranks)
    run(job)


if __name__ == "__main__":
    sys.exit(main())
