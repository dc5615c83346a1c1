"""Collect the runs' results.json files into the paper's table.

Rows are methods in the paper's order, columns are the teacher -> student pairs found, and each cell
is "mean ± std (n)" of the last-epoch top-1 test accuracy over trials (the paper reports the last
epoch, not the best). The std is the sample standard deviation (n - 1), 0 for a single run.

    python scripts/collect_results.py [--root DIR ...] [--include-unfinished] [--format markdown|csv]
                                      [--skip-empty-rows] [--note TEXT]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts import paper  # noqa: E402  (the paper's pairs, rows and methods: scripts/paper.py)
from scripts.paper import PAPER_PAIRS, STUDENT_ROW, TEACHER_ROW  # noqa: E402,F401

RUN_FOLDERS = ("student_model", "models")  # under --save_root, as the training scripts write them
REQUIRED_KEYS = ("kind", "model", "last_acc")

CRD_KD_ROW = paper.METHODS_BY_KEY["crd_kd"].row
# --distill -> row label: the first method of paper.METHODS with that --distill (kd: KD, crd: CRD, dkd: DKD).
METHOD_ROWS = {m.distill: m.row for m in reversed(paper.METHODS)}
# The rows of the paper's tables, in its order, then the later methods' rows (listed when they have runs).
PAPER_ROWS = (TEACHER_ROW, STUDENT_ROW, *(m.row for m in paper.METHODS if m.tables))
LATER_ROWS = tuple(m.row for m in paper.METHODS if not m.tables)

Pair = tuple[str, str]


@dataclass(frozen=True)
class Cell:
    """Summary of one method on one pair: mean and sample std of the last-epoch accuracy over n runs."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Cell:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values))

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} ({self.n})"


@dataclass(frozen=True)
class Table:
    """The paper-style table: row labels, teacher -> student columns, and the filled cells."""

    rows: list[str]
    pairs: list[Pair]
    cells: dict[tuple[str, Pair], Cell]

    def cell(self, row: str, pair: Pair) -> Cell | None:
        return self.cells.get((row, pair))


def pair_label(pair: Pair) -> str:
    return f"{pair[0]} -> {pair[1]}"


def load_results(roots: Iterable[str | os.PathLike]) -> list[dict]:
    """Read every results.json below ``roots`` (missing roots are ignored, each file read once).

    Each dict is the file's content plus ``"path"``, the run folder. Unreadable or incomplete files
    are reported on stderr and skipped.
    """
    results, seen = [], set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for file in sorted(root.rglob("results.json")):
            if file.resolve() in seen:
                continue
            seen.add(file.resolve())
            try:
                result = json.loads(file.read_text())
            except (OSError, ValueError) as e:
                print(f"skipping {file}: cannot read it ({e})", file=sys.stderr)
                continue
            missing = [k for k in REQUIRED_KEYS if not isinstance(result, dict) or k not in result]
            if missing:
                print(f"skipping {file}: no {', '.join(missing)}", file=sys.stderr)
                continue
            results.append({**result, "path": str(file.parent)})
    return results


def method_row(result: dict) -> str:
    """Row label of a student run: the paper's name of its method (scripts/paper.py), CRD with a KD term is
    CRD+KD; runs with logit standardisation (--logit_stand) get their own row, '+LS' (KD+LS, DKD+LS)."""
    distill = str(result["distill"])
    opt = result.get("opt") or {}
    alpha = opt.get("alpha") or 0.0
    row = CRD_KD_ROW if distill == "crd" and float(alpha) > 0 else METHOD_ROWS.get(distill, distill)
    return f"{row}+LS" if opt.get("logit_stand") else row


def order_pairs(pairs: Iterable[Pair]) -> list[Pair]:
    """The paper's column order first, then any other pair alphabetically."""
    pairs = set(pairs)
    known = [p for p in PAPER_PAIRS if p in pairs]
    return known + sorted(pairs - set(known))


def teacher_accuracies(pair: Pair, students: list[dict], teachers: list[dict]) -> list[float]:
    """Teacher row values: one per distinct teacher checkpoint used by the pair's student runs.

    Falls back to the last-epoch accuracy of vanilla runs of the teacher architecture when no
    student run recorded its teacher's accuracy.
    """
    by_checkpoint = {}
    for r in students:
        if (r["teacher"], r["model"]) == pair and r.get("teacher_acc") is not None:
            checkpoint = (r.get("opt") or {}).get("path_t") or r.get("path", "")
            by_checkpoint[os.path.normpath(str(checkpoint))] = float(r["teacher_acc"])
    if by_checkpoint:
        return list(by_checkpoint.values())
    return [float(r["last_acc"]) for r in teachers if r["model"] == pair[0]]


def build_table(results: Iterable[dict], include_unfinished: bool = False) -> Table:
    """Group runs into (method, pair) cells; unfinished runs are left out unless asked for."""
    kept = [r for r in results
            if (include_unfinished or r.get("finished")) and r.get("last_acc") is not None]
    students = [r for r in kept if r["kind"] == "student"]
    teachers = [r for r in kept if r["kind"] == "teacher"]
    pairs = order_pairs((r["teacher"], r["model"]) for r in students)

    values: dict[tuple[str, Pair], list[float]] = {}
    for r in students:
        values.setdefault((method_row(r), (r["teacher"], r["model"])), []).append(float(r["last_acc"]))
    for pair in pairs:
        values[(TEACHER_ROW, pair)] = teacher_accuracies(pair, students, teachers)
        values[(STUDENT_ROW, pair)] = [float(r["last_acc"]) for r in teachers if r["model"] == pair[1]]

    cells = {key: Cell.of(v) for key, v in values.items() if v}
    found = {row for row, _ in cells}
    later = [row for row in LATER_ROWS if row in found]
    extra_rows = sorted(found - set(PAPER_ROWS) - set(later))
    return Table(rows=[*PAPER_ROWS, *later, *extra_rows], pairs=pairs, cells=cells)


def without_empty_rows(table: Table) -> Table:
    """The table with only the rows that have at least one cell (the methods that were run)."""
    rows = [row for row in table.rows if any(table.cell(row, pair) for pair in table.pairs)]
    return Table(rows=rows, pairs=table.pairs, cells=table.cells)


def render_markdown(table: Table, note: str | None = None) -> str:
    """The table in markdown; ``note`` goes into its header, next to "Method" (it holds for every cell)."""
    header = [f"Method ({note})" if note else "Method", *map(pair_label, table.pairs)]
    body = [[row, *(str(table.cell(row, p) or "-") for p in table.pairs)] for row in table.rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    rule = [":" + "-" * (widths[0] - 1), *("-" * (w - 1) + ":" for w in widths[1:])]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        padded = [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:]))]
        return "| " + " | ".join(padded) + " |"

    return "\n".join([line(header), line(rule), *map(line, body)])


def render_csv(table: Table, note: str | None = None) -> str:
    """One line per filled cell: method, teacher, student, mean, std, n (and the note, when given)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", "teacher", "student", "mean", "std", "n", *(["note"] if note else [])])
    for row in table.rows:
        for pair in table.pairs:
            cell = table.cell(row, pair)
            if cell is not None:
                writer.writerow([row, *pair, f"{cell.mean:.4f}", f"{cell.std:.4f}", cell.n, *([note] if note else [])])
    return out.getvalue().rstrip("\n")


RENDERERS = {"markdown": render_markdown, "csv": render_csv}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save_root", default="./save",
                        help=f"the training scripts' --save_root; its {' and '.join(RUN_FOLDERS)} folders are searched")
    parser.add_argument("--root", action="append", default=[], metavar="DIR",
                        help="another folder to search for results.json; repeatable")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="also count runs that stopped before their last epoch")
    parser.add_argument("--format", choices=sorted(RENDERERS), default="markdown", help="output format")
    parser.add_argument("--skip-empty-rows", action="store_true",
                        help="leave out the methods without any run (by default every row of the paper is listed)")
    parser.add_argument("--note", default=None,
                        help="a remark that holds for every cell, printed in the table (e.g. that the runs used "
                             "synthetic data)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    roots = [str(Path(args.save_root) / folder) for folder in RUN_FOLDERS] + args.root
    table = build_table(load_results(roots), include_unfinished=args.include_unfinished)
    if not table.pairs:
        print(f"error: no {'' if args.include_unfinished else 'finished '}distillation runs found under "
              f"{', '.join(map(str, roots))}", file=sys.stderr)
        return 1
    if args.skip_empty_rows:
        table = without_empty_rows(table)
    print(RENDERERS[args.format](table, args.note))
    return 0


def run_as_command(argv: Sequence[str] | None = None) -> int:
    """``main``, quiet when the reader of its output goes away (``collect_results.py | head``)."""
    try:
        code = main(argv)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler
        return code
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that this flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(run_as_command())
