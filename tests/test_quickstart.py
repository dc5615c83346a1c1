"""The README's quick start runs the whole pipeline offline and prints the results table."""
import sys

from scripts import quickstart


def test_quickstart_trains_teacher_baseline_kd_and_crd_then_prints_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = quickstart.main(["--offline", "--teacher", "resnet8", "--student", "resnet8", "--epochs", "1",
                          "--teacher_epochs", "1", "--synthetic_per_class", "2", "--save_root", "qs"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "SYNTHETIC" in out
    table = out[out.index("| Method"):]
    header = table.splitlines()[0]
    assert "synthetic data" in header and "not comparable with the paper" in header  # in the table itself
    assert "resnet8 -> resnet8" in header
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table.splitlines()[2:]}
    assert list(rows) == ["Teacher", "Student", "KD", "CRD"]  # only the rows it ran (the paper's names)
    assert "-" not in rows.values()
