"""What a run shows while an epoch trains: a live bar on a terminal, the original's periodic lines elsewhere.

The loop asks ``due(idx)`` after every step (no host sync) and reads its meters only when it says so, so a
report costs one host sync. Plain mode reports every ``--print_freq`` batches (the original's line plus the
speed and the ETAs); live mode redraws one line at most every ``refresh_s`` seconds, and also at the
``--print_freq`` batches where the loop checks the loss anyway.
"""
from __future__ import annotations

import logging
import shutil
import sys
import time

from helper.util import LOG, show_live_line

BAR_WIDTH = 10  # the whole line fits 80 columns


def format_duration(seconds: float) -> str:
    """12 -> '0m12s', 3725 -> '1h02m05s'."""
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def live_output() -> bool:
    """A live bar only where someone watches: the main process printing to a terminal (not a log file, CI)."""
    isatty = getattr(sys.stdout, "isatty", None)
    return LOG.isEnabledFor(logging.INFO) and callable(isatty) and isatty()


class RunTimer:
    """The run's remaining epochs (init stage included) and their measured duration, for the ETAs."""

    def __init__(self, epochs_left: int):
        self.epochs_left = epochs_left
        self.epochs_timed = 0
        self.seconds = 0.0

    def epoch_done(self, seconds: float) -> None:
        """A whole epoch (training, validation, saving) took ``seconds``."""
        self.epochs_left = max(self.epochs_left - 1, 0)
        self.epochs_timed += 1
        self.seconds += seconds

    def seconds_per_epoch(self) -> float | None:
        return self.seconds / self.epochs_timed if self.epochs_timed else None

    def eta(self, current_left: float = 0.0, current_total: float | None = None) -> float:
        """Seconds until the run ends: what is left of the current epoch (``current_left``, projected to last
        ``current_total`` in all), then the epochs after it at the measured speed (or the current one's)."""
        per_epoch = self.seconds_per_epoch() or current_total or 0.0
        after = self.epochs_left - (1 if current_total is not None else 0)
        return current_left + max(after, 0) * per_epoch


class EpochProgress:
    """Progress of one epoch: ``due`` says when to report, ``report`` prints the line or redraws the bar."""

    def __init__(self, title: str, n_batches: int, print_freq: int, timer: RunTimer | None = None,
                 live: bool | None = None, refresh_s: float = 0.5):
        self.title, self.n_batches, self.print_freq, self.timer = title, n_batches, print_freq, timer
        self.live = live_output() if live is None else live
        self.refresh_s = refresh_s
        self.start = self.last_draw = time.perf_counter()
        self.images = 0

    def step(self, images: int) -> None:
        """A batch of ``images`` went through (counted on the host: no sync)."""
        self.images += images

    def due(self, idx: int) -> bool:
        """Whether batch ``idx`` (0-based) reports: every --print_freq batches, and on a terminal also when
        the bar is ``refresh_s`` old or the epoch ends."""
        if idx % self.print_freq == 0:
            return True
        return self.live and (idx + 1 == self.n_batches or time.perf_counter() - self.last_draw >= self.refresh_s)

    def speed_and_etas(self, idx: int) -> tuple[float, float, float | None]:
        """(images/s, seconds left in this epoch, seconds left in the run or None) after batch ``idx``."""
        elapsed = time.perf_counter() - self.start
        done = idx + 1
        per_batch = elapsed / done
        epoch_left = per_batch * (self.n_batches - done)
        run_left = None
        if self.timer is not None:
            run_left = self.timer.eta(epoch_left, per_batch * self.n_batches)
        return self.images / max(elapsed, 1e-9), epoch_left, run_left

    def report(self, idx: int, line: str, loss: float) -> None:
        """Batch ``idx`` done: ``line`` (the original's periodic line) in plain mode, the bar in live mode."""
        self.last_draw = time.perf_counter()
        ips, epoch_left, run_left = self.speed_and_etas(idx)
        run = f" (run {format_duration(run_left)})" if run_left is not None else ""
        if not self.live:
            LOG.info(f"{line}\t{ips:.0f} img/s\tETA {format_duration(epoch_left)}{run}")
            return
        done = idx + 1
        filled = BAR_WIDTH * done // max(self.n_batches, 1)
        text = (f"{self.title} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{self.n_batches} "
                f"{ips:.0f} img/s loss {loss:.4f} ETA {format_duration(epoch_left)}{run}")
        show_live_line(text[:shutil.get_terminal_size().columns - 1])
