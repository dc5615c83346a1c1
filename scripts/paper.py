"""The paper's CIFAR-100 tables as data: pairs, methods, their settings, and the published numbers.

The one place that says how each run of the CRD paper's Tables 1 and 2 is made: `scripts/reproduce.py` builds
its runs from it, and `scripts/run_cifar_distill.sh` is generated from it (tests/test_reproduce.py checks that
the file is up to date):

    python scripts/paper.py                 # print run_cifar_distill.sh
    python scripts/paper.py --write         # rewrite scripts/run_cifar_distill.sh
    python scripts/paper.py --pair vgg13:vgg8   # the same lines for another pair

Published numbers: Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020, Tables 1
(same architecture style) and 2 (different styles), last-epoch top-1 (%); DKD/DIST/LS rows: the authors'
READMEs (../shared/spec/METHODS2.md §6; DKD and LS report the best epoch, DIST a mean over runs).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISTILL_SCRIPT = ROOT / "scripts" / "run_cifar_distill.sh"

Pair = tuple[str, str]  # (teacher, student)

SAME = "same"  # Table 1: teacher and student of the same architecture style
CROSS = "cross"  # Table 2: different styles
TABLE_TITLES = {SAME: "Table 1: teacher and student of the same architecture style",
                CROSS: "Table 2: teacher and student of different architecture styles"}

TABLE_PAIRS: dict[str, tuple[Pair, ...]] = {
    SAME: (("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
           ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")),
    CROSS: (("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"),
            ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")),
}
PAPER_PAIRS: tuple[Pair, ...] = TABLE_PAIRS[SAME] + TABLE_PAIRS[CROSS]  # the paper's column order
TEACHERS = tuple(dict.fromkeys(t for t, _ in PAPER_PAIRS))  # the six the fetch script knows
TEACHER_EPOCHS = 240  # the published checkpoints' file is ckpt_epoch_240.pth


def fetched_teacher_path(arch: str, save_root: str = "./save") -> str:
    """Where scripts/fetch_pretrained_teachers.sh puts the paper's teacher (its --dest is <save_root>/models)."""
    return f"{save_root.rstrip('/')}/models/{arch}_vanilla/ckpt_epoch_{TEACHER_EPOCHS}.pth"


@dataclass(frozen=True)
class Setting:
    """One run's loss weights and extra flags: train_student.py -r GAMMA -a ALPHA -b BETA FLAGS."""

    gamma: float
    alpha: float
    beta: float
    flags: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        return ["-r", f"{self.gamma:g}", "-a", f"{self.alpha:g}", "-b", f"{self.beta:g}", *self.flags]


@dataclass(frozen=True)
class Method:
    """A row of the table: a --distill method with the paper's weights (and the authors' per-pair ones)."""

    key: str  # its name for --methods
    row: str  # its row label
    distill: str
    setting: Setting
    per_pair: dict[Pair, Setting] = field(default_factory=dict)
    tables: tuple[str, ...] = (SAME, CROSS)  # the paper tables with this row (others: extra rows)
    note: str = ""  # the comment above its line in run_cifar_distill.sh

    def setting_for(self, pair: Pair) -> Setting:
        return self.per_pair.get(pair, self.setting)


def _dkd(beta: float) -> Setting:
    return Setting(1, 0, 1, ("--dkd_beta", f"{beta:g}"))


def _kd_ls(temperature: float, weight: float) -> Setting:
    return Setting(0.1, weight, 0, ("--kd_T", f"{temperature:g}", "--logit_stand"))


def _dkd_ls(temperature: float, alpha: float, beta: float) -> Setting:
    return Setting(1, 0, 1, ("--logit_stand", "--dkd_T", f"{temperature:g}", "--dkd_alpha", f"{alpha:g}",
                             "--dkd_beta", f"{beta:g}"))


# Pair names in the order of TABLE_PAIRS, for the per-pair dicts below.
(WRN_16_2, WRN_40_1, R56_R20, R110_R20, R110_R32, R32X4_R8X4, VGG13_VGG8,
 VGG13_MV2, R50_MV2, R50_VGG8, R32X4_SV1, R32X4_SV2, WRN_SV1) = PAPER_PAIRS

METHODS: tuple[Method, ...] = (
    Method("kd", "KD", "kd", Setting(0.1, 0.9, 0)),
    Method("fitnet", "FitNet", "hint", Setting(1, 0, 100)),
    Method("at", "AT", "attention", Setting(1, 0, 1000)),
    Method("sp", "SP", "similarity", Setting(1, 0, 3000)),
    Method("cc", "CC", "correlation", Setting(1, 0, 0.02)),
    Method("vid", "VID", "vid", Setting(1, 0, 1)),
    Method("rkd", "RKD", "rkd", Setting(1, 0, 1)),
    Method("pkt", "PKT", "pkt", Setting(1, 0, 30000)),
    Method("ab", "AB", "abound", Setting(1, 0, 1)),
    Method("ft", "FT", "factor", Setting(1, 0, 200)),
    Method("fsp", "FSP", "fsp", Setting(1, 0, 50), tables=(SAME,)),  # not applicable across styles (Table 2)
    Method("nst", "NST", "nst", Setting(1, 0, 50)),
    Method("crd", "CRD", "crd", Setting(1, 0, 0.8)),
    Method("crd_kd", "CRD+KD", "crd", Setting(1, 1, 0.8)),
    # Later methods, not in the paper's tables (their published numbers are the authors' own).
    Method("dkd", "DKD", "dkd", _dkd(8), tables=(), note="replaces KD: -a 0; --dkd_beta is the authors' per-pair "
           "value, README \"DKD, DIST and logit standardisation\"",
           per_pair={WRN_16_2: _dkd(6), WRN_40_1: _dkd(6), R56_R20: _dkd(2), R110_R32: _dkd(2), VGG13_VGG8: _dkd(6),
                     VGG13_MV2: _dkd(6)}),
    Method("dist", "DIST", "dist", Setting(1, 0, 2, ("--dist_tau", "4")), tables=(),
           note="-b 2: the authors' kd_loss_weight, tau 4"),
    Method("kd_ls", "KD+LS", "kd", _kd_ls(2, 9), tables=(),
           note="logit standardisation: base temperature 2, kd_weight 9",
           per_pair={R110_R20: _kd_ls(4, 12), VGG13_VGG8: _kd_ls(3, 9), VGG13_MV2: _kd_ls(3, 9),
                     R50_MV2: _kd_ls(3, 1)}),
    Method("dkd_ls", "DKD+LS", "dkd", _dkd_ls(2, 9, 72), tables=(),
           note="alpha and beta times kd_weight 9, temperature 2",
           per_pair={WRN_16_2: _dkd_ls(2, 12, 24), WRN_40_1: _dkd_ls(2, 12, 24), R56_R20: _dkd_ls(3, 18, 36),
                     R110_R20: _dkd_ls(2, 15, 30), R110_R32: _dkd_ls(2, 15, 30), VGG13_VGG8: _dkd_ls(2, 15, 30),
                     VGG13_MV2: _dkd_ls(3, 9, 18), R50_MV2: _dkd_ls(2, 15, 30)}),
    Method("reviewkd", "ReviewKD", "reviewkd", Setting(1, 0, 5), tables=(),
           note="-b: the authors' weight for this pair; ramps up over --reviewkd_warmup 20 epochs",
           per_pair={R56_R20: Setting(1, 0, 0.6), R110_R32: Setting(1, 0, 1), R32X4_SV2: Setting(1, 0, 8)}),
)
METHODS_BY_KEY = {m.key: m for m in METHODS}
PAPER_METHODS = tuple(m.key for m in METHODS if m.tables)

TEACHER_ROW = "Teacher"
STUDENT_ROW = "Student"

# Published top-1 (%), one value per pair in TABLE_PAIRS order; None: not applicable / not published.
_PUBLISHED: dict[str, dict[str, tuple[float | None, ...]]] = {
    SAME: {
        TEACHER_ROW: (75.61, 75.61, 72.34, 74.31, 74.31, 79.42, 74.64),
        STUDENT_ROW: (73.26, 71.98, 69.06, 69.06, 71.14, 72.50, 70.36),
        "KD": (74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98),
        "FitNet": (73.58, 72.24, 69.21, 68.99, 71.06, 73.50, 71.02),
        "AT": (74.08, 72.77, 70.55, 70.22, 72.31, 73.44, 71.43),
        "SP": (73.83, 72.43, 69.67, 70.04, 72.69, 72.94, 72.68),
        "CC": (73.56, 72.21, 69.63, 69.48, 71.48, 72.97, 70.71),
        "VID": (74.11, 73.30, 70.38, 70.16, 72.61, 73.09, 71.23),
        "RKD": (73.35, 72.22, 69.61, 69.25, 71.82, 71.90, 71.48),
        "PKT": (74.54, 73.45, 70.34, 70.25, 72.61, 73.64, 72.88),
        "AB": (72.50, 72.38, 69.47, 69.53, 70.98, 73.17, 70.94),
        "FT": (73.25, 71.59, 69.84, 70.22, 72.37, 72.86, 70.58),
        "FSP": (72.91, None, 69.95, 70.11, 71.89, 72.62, 70.23),
        "NST": (73.68, 72.24, 69.60, 69.53, 71.96, 73.30, 71.53),
        "CRD": (75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94),
        "CRD+KD": (75.64, 74.38, 71.63, 71.56, 73.75, 75.46, 74.29),
        "DKD": (76.23, 74.81, 71.97, 71.06, 74.11, 76.32, 74.68),
        "DIST": (None, 74.43, 71.75, None, None, 76.31, None),
        "KD+LS": (76.11, 74.37, 71.43, 71.48, 74.17, 76.62, 74.36),
        "DKD+LS": (76.39, 74.89, 72.32, 71.85, 74.29, 77.01, 74.81),
    },
    CROSS: {
        TEACHER_ROW: (74.64, 79.34, 79.34, 79.42, 79.42, 75.61),
        STUDENT_ROW: (64.60, 64.60, 70.36, 70.50, 71.82, 70.50),
        "KD": (67.37, 67.35, 73.81, 74.07, 74.45, 74.83),
        "FitNet": (64.14, 63.16, 70.69, 73.59, 73.54, 73.73),
        "AT": (59.40, 58.58, 71.84, 71.73, 72.73, 73.32),
        "SP": (66.30, 68.08, 73.34, 73.48, 74.56, 74.52),
        "CC": (64.86, 65.43, 70.25, 71.14, 71.29, 71.38),
        "VID": (65.56, 67.57, 70.30, 73.38, 73.40, 73.61),
        "RKD": (64.52, 64.43, 71.50, 72.28, 73.21, 72.21),
        "PKT": (67.13, 66.52, 73.01, 74.10, 74.69, 73.89),
        "AB": (66.06, 67.20, 70.65, 73.55, 74.31, 73.34),
        "FT": (61.78, 60.99, 70.29, 71.75, 72.50, 72.03),
        "NST": (58.16, 64.96, 71.28, 74.12, 74.68, 74.89),
        "CRD": (69.73, 69.11, 74.30, 75.11, 75.65, 76.05),
        "CRD+KD": (69.94, 69.54, 74.58, 75.12, 76.05, 76.27),
        "DKD": (69.71, 70.35, None, 76.45, 77.07, 76.70),
        "DIST": (None, 68.66, None, 76.34, 77.35, None),
        "KD+LS": (68.61, 69.02, None, None, 75.56, None),
        "DKD+LS": (69.98, 70.45, None, None, 77.37, None),
    },
}


def published(row: str, pair: Pair) -> float | None:
    """The published top-1 of a row on a pair, or None."""
    for table, pairs in TABLE_PAIRS.items():
        if pair in pairs:
            values = _PUBLISHED[table].get(row)
            return None if values is None else values[pairs.index(pair)]
    return None


def table_of(pair: Pair) -> str | None:
    return next((table for table, pairs in TABLE_PAIRS.items() if pair in pairs), None)


def distill_argv(method: Method, pair: Pair, path_t: str, trial: int | str) -> list[str]:
    """train_student.py's arguments for one run of the table."""
    student = pair[1]
    return ["--path_t", path_t, "--distill", method.distill, "--model_s", student,
            *method.setting_for(pair).argv(), "--trial", str(trial)]


def render_distill_script(pair: Pair = R32X4_R8X4) -> str:
    """scripts/run_cifar_distill.sh: one train_student.py line per method for ``pair``."""
    teacher, student = pair
    lines = [
        "#!/usr/bin/env bash",
        "# Generated by `python scripts/paper.py --write` from the table in scripts/paper.py (do not edit by hand;",
        "# tests/test_reproduce.py checks that it is up to date). The whole sweep: scripts/reproduce.py.",
        f"# Distils {teacher} into {student} with every method, using the paper's hyper-parameters",
        "# (-r: cross-entropy weight, -a: KD weight, -b: the method's own loss weight).",
        "# The teacher comes from scripts/fetch_pretrained_teachers.sh (or scripts/run_cifar_vanilla.sh",
        "# followed by copying its checkpoint there). Summarise with scripts/collect_results.py.",
        "# Extra arguments go to every run, e.g. `bash scripts/run_cifar_distill.sh --trial 2`.",
        "# `python` is the activated environment's, else ./.venv's when there is one (scripts/use_venv.sh).",
        "set -euo pipefail",
        'cd "$(dirname "${BASH_SOURCE[0]}")/.."',
        "source scripts/use_venv.sh",
        "",
    ]
    for method in METHODS:
        if method.key == "reviewkd":
            others = ", ".join(f"{t} -> {s} {m.beta:g}" for (t, s), m in method.per_pair.items() if (t, s) != pair)
            lines.append(f"# ReviewKD's -b for the paper's other pairs (the authors' weights): {others};")
            lines.append(f"#   {method.setting.beta:g} for the rest (the authors' for the wrn/resnet pairs, ours for the "
                         f"vgg/MobileNetV2 ones: none is published)")
        lines.append(f"# {method.row}" + (f" ({method.note})" if method.note else ""))
        words = distill_argv(method, pair, fetched_teacher_path(teacher), 1)
        lines.append(" ".join(["python", "train_student.py", *words, '"$@"']))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default=":".join(R32X4_R8X4), help="TEACHER:STUDENT (default %(default)s)")
    parser.add_argument("--write", action="store_true", help=f"write {DISTILL_SCRIPT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:  # run as a script: scripts/reproduce.py parses pairs (and knows the networks)
        sys.path.insert(0, str(ROOT))
    from scripts.reproduce import SweepError, parse_pairs

    try:
        pairs = parse_pairs(args.pair)
    except SweepError as e:
        parser.error(str(e).replace("--pairs", "--pair"))
    if len(pairs) != 1:
        parser.error(f"--pair: one TEACHER:STUDENT pair, got {args.pair!r}")
    text = render_distill_script(pairs[0])
    if args.write:
        DISTILL_SCRIPT.write_text(text)
        print(f"wrote {DISTILL_SCRIPT}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
