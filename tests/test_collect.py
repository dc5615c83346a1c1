"""scripts/collect_results.py: results.json folders -> the paper's table."""
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import collect_results as collect
from scripts import paper

SCRIPT = Path(collect.__file__)
DEFAULT_ROOTS = [f"./save/{folder}" for folder in collect.RUN_FOLDERS]

PAIR = ("resnet32x4", "resnet8x4")
TEACHER_PATH = "./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth"


def write_run(root: Path, name: str, *, kind: str = "student", model: str = "resnet8x4",
              teacher: str | None = "resnet32x4", distill: str | None = "kd", alpha: float = 0.0,
              last_acc: float | None = 70.0, teacher_acc: float | None = 79.42, finished: bool = True,
              trial: str = "1") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    result = {
        "kind": kind, "model": model, "teacher": teacher, "distill": distill, "trial": trial,
        "opt": {"gamma": 1.0, "alpha": alpha, "beta": 0.8,
                "path_t": TEACHER_PATH if kind == "student" else None},
        "teacher_acc": teacher_acc if kind == "student" else None,
        "best_acc": last_acc, "best_epoch": 200, "last_acc": last_acc, "last_acc_top5": 95.0,
        "epochs_done": 240 if finished else 12, "epochs": 240, "finished": finished, "wall_time_s": 1.0,
    }
    (folder / "results.json").write_text(json.dumps(result))
    return folder


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small save/ tree: 3 KD trials, CRD, CRD+KD, a vanilla student, a teacher and an unfinished run."""
    monkeypatch.chdir(tmp_path)
    students, teachers = tmp_path / "save" / "student_model", tmp_path / "save" / "models"
    for trial, acc in zip("123", (73.0, 74.0, 75.5)):
        write_run(students, f"S:resnet8x4_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0_{trial}",
                  distill="kd", alpha=0.9, last_acc=acc, trial=trial)
    write_run(students, "S:resnet8x4_T:resnet32x4_cifar100_crd_r:1_a:0.0_b:0.8_1",
              distill="crd", alpha=0.0, last_acc=75.1)
    write_run(students, "S:resnet8x4_T:resnet32x4_cifar100_crd_r:1_a:1.0_b:0.8_1",
              distill="crd", alpha=1.0, last_acc=75.9)
    write_run(students, "S:resnet8x4_T:resnet32x4_cifar100_hint_r:1_a:0_b:100_1",
              distill="hint", last_acc=10.0, finished=False)
    write_run(teachers, "resnet8x4_cifar100_lr_0.05_decay_0.0005_trial_0", kind="teacher",
              teacher=None, distill=None, last_acc=72.5)
    write_run(teachers, "resnet32x4_cifar100_lr_0.05_decay_0.0005_trial_0", kind="teacher",
              model="resnet32x4", teacher=None, distill=None, last_acc=79.0)
    return tmp_path


def test_kd_cell_is_mean_and_sample_std_of_the_last_epoch_accuracy_over_trials(runs: Path):
    table = collect.build_table(collect.load_results(DEFAULT_ROOTS))
    cell = table.cell("KD", PAIR)
    assert cell.n == 3
    assert cell.mean == pytest.approx(74.1666667)
    assert cell.std == pytest.approx(statistics.stdev([73.0, 74.0, 75.5]))
    assert str(cell) == f"74.17 ± {statistics.stdev([73.0, 74.0, 75.5]):.2f} (3)"


def test_crd_with_a_kd_term_is_its_own_row(runs: Path):
    table = collect.build_table(collect.load_results(DEFAULT_ROOTS))
    assert table.cell("CRD", PAIR) == collect.Cell(75.1, 0.0, 1)
    assert table.cell("CRD+KD", PAIR) == collect.Cell(75.9, 0.0, 1)


def test_teacher_row_counts_each_teacher_checkpoint_once_and_student_row_uses_vanilla_runs(runs: Path):
    table = collect.build_table(collect.load_results(DEFAULT_ROOTS))
    assert table.cell("Teacher", PAIR) == collect.Cell(79.42, 0.0, 1)
    assert table.cell(paper.STUDENT_ROW, PAIR) == collect.Cell(72.5, 0.0, 1)


def test_teacher_row_falls_back_to_vanilla_runs_of_the_teacher_architecture(tmp_path: Path):
    write_run(tmp_path, "kd", teacher_acc=None)
    write_run(tmp_path, "t", kind="teacher", model="resnet32x4", teacher=None, distill=None, last_acc=79.0)
    table = collect.build_table(collect.load_results([tmp_path]))
    assert table.cell("Teacher", PAIR) == collect.Cell(79.0, 0.0, 1)


def test_unfinished_runs_are_skipped_unless_included(runs: Path):
    write_run(runs / "save" / "student_model", "not_started", distill="hint", last_acc=None, finished=False)
    results = collect.load_results(DEFAULT_ROOTS)
    assert collect.build_table(results).cell("FitNet", PAIR) is None
    assert collect.build_table(results, include_unfinished=True).cell("FitNet", PAIR) == collect.Cell(10.0, 0.0, 1)


def test_markdown_table_has_paper_rows_in_order_and_dashes_for_missing_cells(runs: Path, capsys):
    assert collect.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Method", "resnet32x4 -> resnet8x4"]
    rows = {c[0]: c[1] for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines[2:])}
    assert list(rows) == list(collect.PAPER_ROWS)
    assert rows["Teacher"] == "79.42 ± 0.00 (1)"
    assert rows["CRD+KD"] == "75.90 ± 0.00 (1)"
    assert rows["FitNet"] == "-"
    assert rows["AT"] == "-"


def test_extra_roots_add_columns_in_the_paper_order(runs: Path, tmp_path: Path, capsys):
    extra = tmp_path / "elsewhere"
    write_run(extra, "wrn", model="wrn_16_2", teacher="wrn_40_2", last_acc=74.9, teacher_acc=75.6)
    assert collect.main(["--root", str(extra)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.index("wrn_40_2 -> wrn_16_2") < header.index("resnet32x4 -> resnet8x4")


def test_the_same_folder_reached_through_two_roots_counts_once(runs: Path):
    results = collect.load_results([*DEFAULT_ROOTS, "./save"])
    assert collect.build_table(results).cell("KD", PAIR).n == 3


def test_csv_lists_one_line_per_filled_cell(runs: Path, capsys):
    assert collect.main(["--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "method,teacher,student,mean,std,n"
    assert "CRD+KD,resnet32x4,resnet8x4,75.9000,0.0000,1" in lines
    assert not any(line.startswith("FitNet,") for line in lines)


def test_broken_results_file_is_reported_and_skipped(runs: Path, capsys):
    broken = runs / "save" / "student_model" / "broken"
    broken.mkdir()
    (broken / "results.json").write_text('{"kind": "stud')
    results = collect.load_results(DEFAULT_ROOTS)
    assert all(r["path"] != str(broken) for r in results)
    assert "broken" in capsys.readouterr().err


def test_no_runs_is_an_error_with_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert collect.main([]) == 1
    assert capsys.readouterr().err.startswith("error: no finished distillation runs")


def test_skip_empty_rows_and_a_note_in_the_table_header(runs: Path, capsys):
    assert collect.main(["--skip-empty-rows", "--note", "synthetic data"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Method (synthetic data)", "resnet32x4 -> resnet8x4"]
    rows = [line.split("|")[1].strip() for line in lines[2:]]
    assert rows == ["Teacher", paper.STUDENT_ROW, "KD", "CRD", "CRD+KD"]  # FitNet is unfinished: no row
    assert collect.main(["--format", "csv", "--note", "synthetic data"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(",n,note") and all(line.endswith(",synthetic data") for line in lines[1:])


@pytest.mark.parametrize("unbuffered", [False, True])
def test_output_piped_into_a_reader_that_stops_early_ends_without_a_traceback(runs: Path, unbuffered):
    """`collect_results.py | head -1`: the reader is gone before the table is written (by print, or by the
    flush at exit when stdout is buffered, as it is on a pipe unless PYTHONUNBUFFERED is set)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen([sys.executable, str(SCRIPT)], cwd=runs, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    process.stdout.close()  # before the script has imported anything: its first write meets a closed pipe
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert err == ""  # no "BrokenPipeError", no "Exception ignored"


@pytest.mark.parametrize("distill, opt, row", [
    ("dkd", {"alpha": 0.0}, "DKD"), ("dist", {"alpha": 0.0}, "DIST"), ("reviewkd", {"alpha": 0.0}, "ReviewKD"),
    ("kd", {"alpha": 9.0, "logit_stand": True}, "KD+LS"), ("dkd", {"alpha": 0.0, "logit_stand": True}, "DKD+LS"),
    ("crd", {"alpha": 1.0}, "CRD+KD"), ("hint", {"alpha": 0.0}, "FitNet"),
])
def test_rows_get_the_names_of_scripts_paper(distill, opt, row):
    assert collect.method_row({"distill": distill, "opt": opt}) == row
    assert row in {m.row for m in paper.METHODS}


def test_teacher_and_student_rows_are_named_as_in_scripts_paper():
    assert (collect.TEACHER_ROW, collect.STUDENT_ROW) == (paper.TEACHER_ROW, paper.STUDENT_ROW)
    assert collect.STUDENT_ROW == "Student"
    assert collect.PAPER_ROWS[2:] == tuple(m.row for m in paper.METHODS if m.tables)


def test_later_methods_rows_follow_the_paper_rows_in_the_order_of_scripts_paper(tmp_path: Path):
    write_run(tmp_path, "reviewkd", distill="reviewkd", last_acc=71.0)
    write_run(tmp_path, "dist", distill="dist", last_acc=71.5)
    write_run(tmp_path, "dkd", distill="dkd", last_acc=72.0)
    write_run(tmp_path, "other", distill="Another", last_acc=60.0)
    table = collect.build_table(collect.load_results([tmp_path]))
    assert table.rows == [*collect.PAPER_ROWS, "DKD", "DIST", "ReviewKD", "Another"]  # not alphabetical
    assert table.cell("DKD", PAIR) == collect.Cell(72.0, 0.0, 1)
