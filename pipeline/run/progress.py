"""Progress for long work: a rich bar on a terminal, periodic plain lines in logs (dvc repro, CI)."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.run import runtime

console = Console(stderr=True, highlight=False, soft_wrap=True)


class Tracker:
    """`with Tracker("train", total) as t: t.advance(1, loss=0.1)`."""

    def __init__(self, label: str, total: int, every_s: float = 15.0, start: int = 0):
        self.label, self.total, self.every_s = label, total, every_s
        self.done = start
        self.interactive = sys.stderr.isatty()
        self._bar = None

    def __enter__(self):
        self.t0 = self._last = time.monotonic()
        if self.interactive:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.done, info="")
        return self

    def advance(self, n: int = 1, **info) -> None:
        self.done += n
        threads = runtime.rebalance()  # other `agd` processes started or ended: take this one's share
        if threads is not None:
            console.print(f"{self.label}: now {threads} torch threads ({runtime.running_processes()} agd processes "
                          f"share {runtime.usable_cores()} cores; AGD_THREADS fixes the count)")
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, info=text)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            pct = 100.0 * self.done / max(self.total, 1)
            console.print(f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) {text} [{now - self.t0:.0f} s]")

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
        return False


def log(message: str) -> None:
    console.print(message)
