"""Train a network from scratch (the teachers of the paper, and the vanilla students)."""
from __future__ import annotations

import argparse
import sys

from cli.app import cli, prepare_run
from cli.build import build_data, build_model, maybe_compile, to_channels_last
from cli.options import (ScriptParser, add_common_args, check_common, make_run_folders, model_names,
                         override_small_lr, parse_with_recipe)
from helper.distributed import sum_across_ranks
from helper.engine import Job, run
from helper.objectives import TeacherObjective


def get_args_parser() -> argparse.ArgumentParser:
    parser = ScriptParser("train_teacher.py", description=__doc__, usage="%(prog)s --model MODEL [options]")
    add_common_args(parser)
    parser.add_argument("--model", type=str, default="resnet110", choices=model_names(), metavar="MODEL",
                        help=f"architecture: {', '.join(model_names())}")
    parser.add_argument("-t", "--trial", type=int, default=0, help="the experiment id (the run folder's last part)")
    return parser


def parse_option(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_args_parser()
    opt = parse_with_recipe(parser, argv)
    check_common(parser, opt)
    opt.lr_override = override_small_lr(opt, opt.model)
    opt.model_name = (f"{opt.model}_{opt.dataset}_lr_{opt.learning_rate}_decay_{opt.weight_decay}"
                      f"_trial_{opt.trial}")
    make_run_folders(opt, "models", "tensorboard")
    return opt


@cli
def main(argv: list[str] | None = None) -> None:
    opt = parse_option(argv)
    device = prepare_run(opt)
    train_loader, test_loader, _ = build_data(opt, device)
    model = build_model(opt, opt.model, device)
    to_channels_last(opt, model)
    job = Job(opt=opt, kind="teacher", device=device, model=model,
              objective=TeacherObjective(maybe_compile(opt, model)),
              train_loader=train_loader, test_loader=test_loader, model_name=opt.model,
              is_main=opt.is_main, reduce=sum_across_ranks)
    run(job)


if __name__ == "__main__":
    sys.exit(main())
