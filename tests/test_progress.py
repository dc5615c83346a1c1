"""Progress inside an epoch: the original's periodic lines (with speed and ETAs) when the output is not a
terminal, a live bar on a terminal; the run's ETA from the measured epochs."""
import io
import logging
import re
from argparse import Namespace

import pytest
import torch
from torch import nn

from dataset.batch import Batch
from helper import util
from helper.loops import train_epoch
from helper.objectives import TeacherObjective
from helper.progress import RunTimer, format_duration
from helper.util import LOG

CPU = torch.device("cpu")
N_BATCHES = 7


def batches(n: int = N_BATCHES, size: int = 4) -> list[Batch]:
    generator = torch.Generator().manual_seed(0)
    return [Batch(images=torch.randn(size, 3, 32, 32, generator=generator),
                  labels=torch.randint(0, 100, (size,), generator=generator),
                  indices=torch.arange(i * size, (i + 1) * size)) for i in range(n)]


def one_epoch(print_freq: int, timer: RunTimer | None = None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 100))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    opt = Namespace(print_freq=print_freq)
    return train_epoch(3, batches(), TeacherObjective(model), optimizer, opt, CPU, timer=timer)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def no_bar_left_over(monkeypatch):
    """Each test starts, and leaves the next test, without a bar on the (real) terminal line."""
    monkeypatch.setattr(util, "_live_line", False)


@pytest.fixture
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    return caplog


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Epoch: [")]


def test_not_on_a_terminal_the_original_line_comes_every_print_freq_batches_with_speed_and_etas(
        info_logs, capsys):
    one_epoch(print_freq=3, timer=RunTimer(epochs_left=5))
    lines = progress_lines(info_logs)
    assert [re.match(r"Epoch: \[3\]\[(\d+)/7\]\t", line).group(1) for line in lines] == ["0", "3", "6"]
    for line in lines:
        assert re.search(r"\tLoss [\d.]+ \([\d.]+\)\tAcc@1 ", line), line  # the original's fields first
        assert re.search(r"\t\d+ img/s\tETA \d+m\d\ds \(run \d+m\d\ds\)$", line), line
    assert "\r" not in capsys.readouterr().out  # no bar in a log file


def test_without_a_run_timer_the_line_has_the_epoch_eta_only(info_logs):
    one_epoch(print_freq=100)
    (line,) = progress_lines(info_logs)
    assert re.search(r"\tETA \d+m\d\ds$", line) and "run" not in line


def test_on_a_terminal_a_live_bar_replaces_the_periodic_lines(info_logs, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    one_epoch(print_freq=3, timer=RunTimer(epochs_left=2))
    assert progress_lines(info_logs) == []
    draws = [d for d in terminal.getvalue().split("\r") if d]
    assert draws, terminal.getvalue()
    for draw in draws:  # each redraw: title, bar, batches done, speed, loss, ETAs; then erase the rest of the line
        assert re.fullmatch(r"epoch 3 \[#*\.*\] \d/7 \d+ img/s loss [\d.]+ ETA \d+m\d\ds \(run \d+m\d\ds\)\x1b\[K",
                            draw), draw
    assert draws[-1].startswith("epoch 3 [##########] 7/7 ")  # the last batch is always drawn


def test_a_log_message_first_erases_the_bar(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    handler = util._StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    util.show_live_line("epoch 1 [#...]")
    handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "teacher accuracy: 1.0", None, None))
    assert terminal.getvalue() == "\repoch 1 [#...]\x1b[K\r\x1b[Kteacher accuracy: 1.0\n"
    handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "next", None, None))
    assert terminal.getvalue().endswith("1.0\nnext\n")  # nothing left to erase


def test_run_eta_is_the_rest_of_this_epoch_plus_the_epochs_after_it_at_the_measured_speed():
    timer = RunTimer(epochs_left=4)
    assert timer.eta(current_left=30.0, current_total=100.0) == 30.0 + 3 * 100.0  # nothing measured yet
    timer.epoch_done(120.0)
    timer.epoch_done(80.0)
    assert timer.epochs_left == 2 and timer.seconds_per_epoch() == 100.0
    assert timer.eta() == 200.0  # between epochs
    assert timer.eta(current_left=10.0, current_total=50.0) == 10.0 + 1 * 100.0


@pytest.mark.parametrize("seconds,text", [(0, "0m00s"), (59.9, "0m59s"), (61, "1m01s"), (3725, "1h02m05s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
