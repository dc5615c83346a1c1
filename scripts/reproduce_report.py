"""scripts/reproduce.py's outputs: the table (reproduce.md, reproduce.json, reproduce.png), the end-of-sweep
summary, and the --dry_run plan with its estimated device-hours (from benchmarks.json)."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from helper.checkpoint import write_json_atomic
from scripts import paper
from scripts.collect_results import Cell, pair_label
from scripts.reproduce import ROOT, Plan, Run, is_done, read_results

OTHER = "other"  # pairs outside the paper's tables
TITLES = {**paper.TABLE_TITLES, OTHER: "Other pairs"}
CIFAR_TRAIN_IMAGES, CIFAR_TEST_IMAGES = 50_000, 10_000
BENCHMARKS = ROOT / "benchmarks.json"


# ---- cells --------------------------------------------------------------------------------------------------


def finished_results(runs: list[Run]) -> list[tuple[Run, dict]]:
    kept = []
    for run in runs:
        results = read_results(run)
        if results is not None and is_done(run, results) and results.get("last_acc") is not None:
            kept.append((run, results))
    return kept


def pair_rows(plan: Plan, pair: paper.Pair) -> list[tuple[str, str | None, list[Run], str]]:
    """(row label, method key, the runs of the cell, what a value is) for one column, in the paper's order."""
    teacher_runs = [r for r in plan.runs if r.kind == "teacher" and r.model == pair[0]]
    rows = [(paper.TEACHER_ROW, None, teacher_runs, "teacher"),
            (paper.STUDENT_ROW, None, [r for r in plan.runs if r.kind == "vanilla" and r.model == pair[1]], "last")]
    for key in plan.methods:
        method = paper.METHODS_BY_KEY[key]
        runs = [r for r in plan.runs if r.kind == "student" and r.pair == pair and r.method == key]
        if runs:
            rows.append((method.row, key, runs, "last"))
    return rows


def teacher_values(plan: Plan, pair: paper.Pair, teacher_runs: list[Run]) -> tuple[list[float], list[Run]]:
    """A trained teacher's last-epoch accuracy; a fetched one's as its students measured it (one checkpoint)."""
    if teacher_runs:
        found = finished_results(teacher_runs)
        return [float(res["last_acc"]) for _, res in found], [run for run, _ in found]
    students = [r for r in plan.runs if r.kind == "student" and r.pair == pair]
    for run, results in finished_results(students):
        if results.get("teacher_acc") is not None:
            return [float(results["teacher_acc"])], []
    return [], []


def build_cells(plan: Plan) -> list[dict[str, Any]]:
    cells = []
    for pair in plan.pairs:
        table = paper.table_of(pair) or OTHER
        for row, key, runs, kind in pair_rows(plan, pair):
            if kind == "teacher":
                values, used = teacher_values(plan, pair, runs)
                planned = max(1, len(runs))
            else:
                found = finished_results(runs)
                values, used = [float(res["last_acc"]) for _, res in found], [run for run, _ in found]
                planned = len(runs)
            cell = Cell.of(values) if values else None
            published = paper.published(row, pair)
            cells.append({
                "table": table, "row": row, "method": key, "teacher": pair[0], "student": pair[1],
                "values": values, "n": len(values), "planned": planned,
                "mean": None if cell is None else cell.mean, "std": None if cell is None else cell.std,
                "paper": published,
                "diff": None if cell is None or published is None else cell.mean - published,
                "runs": [str(run.folder) for run in used],
            })
    return cells


def cell_text(cell: dict[str, Any]) -> str:
    ours = "-" if cell["mean"] is None else f"{cell['mean']:.2f}" + (f" ± {cell['std']:.2f}" if cell["n"] > 1 else "")
    if cell["mean"] is not None or cell["planned"] > 1:
        ours += f" ({cell['n']}/{cell['planned']})" if cell["n"] < cell["planned"] else f" ({cell['n']})"
    if cell["paper"] is None:
        return ours
    diff = "" if cell["diff"] is None else f" ({cell['diff']:+.2f})"
    return f"{ours} / {cell['paper']:.2f}{diff}"


def render_table(cells: list[dict[str, Any]], table: str) -> str:
    chosen = [c for c in cells if c["table"] == table]
    pairs = list(dict.fromkeys((c["teacher"], c["student"]) for c in chosen))
    rows = list(dict.fromkeys(c["row"] for c in chosen))
    by_key = {(c["row"], (c["teacher"], c["student"])): c for c in chosen}
    header = ["Method", *map(pair_label, pairs)]
    body = [[row, *(cell_text(by_key[(row, p)]) if (row, p) in by_key else "" for p in pairs)] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    rule = [":" + "-" * (widths[0] - 1), *("-" * (w - 1) + ":" for w in widths[1:])]

    def line(values: list[str]) -> str:
        first, *rest = values
        return "| " + " | ".join([first.ljust(widths[0]), *(v.rjust(w) for v, w in zip(rest, widths[1:]))]) + " |"

    return "\n".join([line(header), line(rule), *map(line, body)])


# ---- outputs ------------------------------------------------------------------------------------------------


def run_records(plan: Plan, sweep) -> list[dict[str, Any]]:
    records = []
    for run in plan.runs:
        results = read_results(run) or {}
        state = sweep.states[run.id] if sweep is not None else None
        status = state.status if state is not None else ("finished" if is_done(run, results) else
                                                        "failed" if run.error else "not finished")
        records.append({
            "id": run.id, "kind": run.kind, "status": status, "folder": None if run.folder is None else str(run.folder),
            "command": run.command(resume=run.error is None), "teacher": run.pair[0] if run.pair else None,
            "model": run.model, "method": run.method, "trial": run.trial, "last_acc": results.get("last_acc"),
            "epochs_done": results.get("epochs_done"), "epochs": run.epochs,
            "wall_time_s": results.get("wall_time_s"),
            "error": (state.tail if state is not None and status in ("failed", "blocked") else
                      [run.error] if run.error else None),
        })
    return records


def render_markdown(plan: Plan, cells: list[dict[str, Any]], records: list[dict[str, Any]]) -> str:
    lines = ["# Reproduction of the CRD paper's CIFAR-100 tables", "",
             "Each cell: our mean ± sample std of the last-epoch top-1 (%) over trials (runs finished / planned when "
             "some are missing) / the published number (our difference). Teacher row: the trained teacher's "
             "last epoch, or the fetched checkpoint as its students measured it. Published: the CRD paper (ICLR "
             "2020) Tables 1-2; DKD, DIST and LS rows: the authors' READMEs (DKD and LS report the best epoch).",
             ""]
    for table in (*paper.TABLE_PAIRS, OTHER):
        if any(c["table"] == table for c in cells):
            lines += [f"## {TITLES[table]}", "", render_table(cells, table), ""]
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    lines += ["## Runs", "", ", ".join(f"{n} {status}" for status, n in sorted(counts.items())), ""]
    failed = [r for r in records if r["status"] in ("failed", "blocked")]
    for record in failed:
        lines += [f"- **{record['id']}** {record['status']}: `{record['command']}`", "", "  ```",
                  *(f"  {line}" for line in record["error"] or []), "  ```", ""]
    return "\n".join(lines)


def write_figure(cells: list[dict[str, Any]], path: Path) -> str | None:
    """Ours vs the paper: a scatter (one point per cell with a published number) and the differences per
    method and pair. Needs matplotlib (optional); returns why it was skipped, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no reproduce.png"
    compared = [c for c in cells if c["diff"] is not None]
    if not compared:
        return "no cell with both our number and the paper's yet: no reproduce.png"
    rows = list(dict.fromkeys(c["row"] for c in compared))
    pairs = list(dict.fromkeys((c["teacher"], c["student"]) for c in compared))
    fig, (left, right) = plt.subplots(1, 2, figsize=(7 + 0.6 * len(pairs), max(5.0, 0.35 * len(rows) + 2)),
                                      gridspec_kw={"width_ratios": [1, max(1.0, len(pairs) / 5)]})
    markers = "os^vD<>phP*Xd8H"
    for i, row in enumerate(rows):
        chosen = [c for c in compared if c["row"] == row]
        left.scatter([c["paper"] for c in chosen], [c["mean"] for c in chosen], label=row, s=22,
                     marker=markers[i % len(markers)])
    low = min(min(c["paper"], c["mean"]) for c in compared) - 1
    high = max(max(c["paper"], c["mean"]) for c in compared) + 1
    left.plot([low, high], [low, high], color="grey", linewidth=0.8)
    left.set(xlabel="paper top-1 (%)", ylabel="ours, mean over trials (%)", title="ours vs the paper")
    left.legend(fontsize=6, ncol=2)
    grid = [[math.nan] * len(pairs) for _ in rows]
    for c in compared:
        grid[rows.index(c["row"])][pairs.index((c["teacher"], c["student"]))] = c["diff"]
    bound = max(1.0, max(abs(c["diff"]) for c in compared))
    image = right.imshow(grid, cmap="coolwarm_r", vmin=-bound, vmax=bound, aspect="auto")
    right.set_xticks(range(len(pairs)), [f"{t}\n{s}" for t, s in pairs], fontsize=6, rotation=90)
    right.set_yticks(range(len(rows)), rows, fontsize=7)
    for c in compared:
        right.text(pairs.index((c["teacher"], c["student"])), rows.index(c["row"]), f"{c['diff']:+.1f}",
                   ha="center", va="center", fontsize=6)
    right.set_title("ours - paper (points)")
    fig.colorbar(image, ax=right, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write(plan: Plan, sweep, report_dir: Path) -> str:
    """Write reproduce.md/.json/.png under ``report_dir``; return the summary to print."""
    report_dir.mkdir(parents=True, exist_ok=True)
    cells = build_cells(plan)
    records = run_records(plan, sweep)
    (report_dir / "reproduce.md").write_text(render_markdown(plan, cells, records) + "\n")
    figure_note = write_figure(cells, report_dir / "reproduce.png")
    write_json_atomic({"pairs": [list(p) for p in plan.pairs], "methods": plan.methods, "trials": plan.trials,
                       "teachers": plan.teachers, "cells": cells, "runs": records}, report_dir / "reproduce.json")
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    lines = [f"==> {len(records)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    for record in records:
        if record["status"] in ("failed", "blocked"):
            last = (record["error"] or ["?"])[-1]
            lines.append(f"  {record['status'].upper()} {record['id']}: {last}\n    rerun it alone: {record['command']}")
    lines.append(f"==> table: {report_dir / 'reproduce.md'} (and reproduce.json"
                 + (", reproduce.png)" if figure_note is None else f"; {figure_note})"))
    return "\n".join(lines)


# ---- --dry_run: the plan and its cost -------------------------------------------------------------------------


def benchmark_sections(path: Path = BENCHMARKS) -> list[dict[str, Any]]:
    """The step tables of benchmarks.json (scripts/benchmark.py --sections steps)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    sections = []
    for name, section in report.get("sections", {}).items():
        results = section.get("results", {})
        if "distill_step" in results and "forward_flops_per_image" in results:
            sections.append({"name": name, "device": str(results.get("device", "cpu")).split(":")[0],
                             "where": section.get("environment", {}).get("device", "?"), "results": results})
    return sections


@functools.cache
def forward_flops(arch: str) -> float:
    import torch

    from models import model_dict
    from scripts.benchmark import forward_flops as count

    with torch.random.fork_rng():
        return count(model_dict[arch](num_classes=100), 1, torch.device("cpu"))


def config_label(rows: dict[str, Any], flags: list[str]) -> str | None:
    """The benchmark row of the speed flags the runs get (--amp, --channels_last)."""
    amp, channels_last = "--amp" in flags, "--channels_last" in flags
    for label in rows:
        if label not in ("faithful", "best") and ("amp" in label) == amp and ("channels_last" in label) == channels_last:
            return label
    return None


class Estimator:
    """Seconds per epoch of a run: the benchmark's images/s for its method and speed flags on the nearest
    measured pair, scaled by forward FLOPs (teacher + 3 x student for a distillation, 3 x the network otherwise)."""

    def __init__(self, device: str, routed: dict[str, list[str]]):
        sections = benchmark_sections()
        same = [s for s in sections if s["device"] == device]
        self.sections = same or sections
        self.note = ("" if same or not sections else
                     f"no {device} step table in benchmarks.json: estimated from {self.sections[0]['where']} "
                     f"(run scripts/benchmark.py --sections steps on this device for real numbers)")
        self.routed = routed

    def cost_flops(self, run: Run) -> float:
        if run.kind == "student":
            return forward_flops(run.pair[0]) + 3 * forward_flops(run.pair[1])
        return 3 * forward_flops(run.model)

    def images_per_s(self, run: Run) -> float | None:
        if not self.sections:
            return None
        flops = self.cost_flops(run)

        def reference_flops(section: dict) -> float:
            f = section["results"]["forward_flops_per_image"]
            return f["teacher"] + 3 * f["student"] if run.kind == "student" else 3 * f["teacher"]

        section = min(self.sections, key=lambda s: abs(math.log(reference_flops(s) / flops)))
        results = section["results"]
        if run.kind == "student":
            steps = results["distill_step"]
            method = paper.METHODS_BY_KEY[run.method].distill
            rows = steps.get(method) or steps.get("kd")
            flags = self.routed["train_student.py"]
        else:
            rows, flags = results["teacher_step"], self.routed["train_teacher.py"]
        label = config_label(rows, flags)
        if label is None:
            return None
        return rows[label]["images_per_s"] * reference_flops(section) / flops

    def hours(self, run: Run) -> float | None:
        rate = self.images_per_s(run)
        if rate is None or run.folder is None:
            return None
        epoch_s = CIFAR_TRAIN_IMAGES / rate + CIFAR_TEST_IMAGES / (3 * rate)  # the test pass: forward only
        return (run.epochs + run.init_epochs) * epoch_s / 3600


def dry_run(plan: Plan, engine, routed: dict[str, list[str]]) -> str:
    estimator = Estimator(plan.device, routed)
    lines = [f"plan: {len(plan.pairs)} pairs x {len(plan.methods)} methods x {plan.trials} trials "
             f"({', '.join(plan.methods)})"]
    kinds = {kind: [r for r in plan.runs if r.kind == kind] for kind in ("teacher", "vanilla", "student")}
    teachers = (f"{len(kinds['teacher'])} trained first" if kinds["teacher"] else
                f"fetched ({', '.join(plan.fetch)} to download)" if plan.fetch else "fetched (all present)")
    lines.append(f"runs: {len(plan.runs)} = teachers {teachers}, {len(kinds['vanilla'])} vanilla students, "
                 f"{len(kinds['student'])} distillations")
    lines.append(f"packing: {engine.describe()} -> {engine.capacity} runs at once")
    lines.append("order (students wait for their teacher; '=' finished already, '!' refused by its script):")
    total = remaining = 0.0
    unknown = 0
    for number, run in enumerate(plan.runs, start=1):
        hours = estimator.hours(run)
        done = run.folder is not None and is_done(run)
        mark = "!" if run.error else "=" if done else " "
        if hours is None:
            unknown += not run.error
        else:
            total += hours
            remaining += 0 if done else hours
        after = f" after {', '.join(run.deps)}" if run.deps else ""
        cost = "" if hours is None else f" ~{hours:.2f} h"
        lines.append(f" {mark}{number:4d}. {run.id}{after}{cost}" + (f"  [{run.error}]" if run.error else ""))
    device = "GPU" if plan.device == "cuda" else "CPU"
    if estimator.sections:
        lines.append(f"estimate: {total:.1f} {device}-hours for all runs, {remaining:.1f} still to run (each run "
                     f"alone on a device, from the benchmark's images/s for its method and speed flags, scaled by "
                     f"FLOPs" + (f"; {unknown} runs without a number" if unknown else "") + ")")
        devices = max(1, len(engine.gpus) if plan.device == "cuda" else 1)  # a LocalEngine (the dry run's)
        lines.append(f"wall clock on {devices} {device}(s): at most {remaining / devices:.1f} h; packing "
                     f"{engine.runs_per_gpu} runs per {device} brings it down to {remaining / devices / engine.runs_per_gpu:.1f} h "
                     f"where one run leaves the device idle enough (measure with a packed sample)")
        if estimator.note:
            lines.append(f"note: {estimator.note}")
    else:
        lines.append("estimate: benchmarks.json has no step table (run scripts/benchmark.py --sections steps)")
    lines.append("commands:")
    lines += [f"  {r.command()}" for r in plan.runs[:3]]
    if len(plan.runs) > 3:
        lines.append(f"  ... ({len(plan.runs) - 3} more; all are in the plan above)")
    return "\n".join(lines)
