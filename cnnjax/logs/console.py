"""What a person sees: a startup summary and a progress display with steps/s and ETA."""

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=False, highlight=False)


def startup_summary(rows: dict, enabled: bool = True) -> None:
    if not enabled:
        return
    table = Table(title="cnnjax run", show_header=False, box=None)
    for k, v in rows.items():
        table.add_row(f"[bold]{k}", str(v))
    console.print(table)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class ProgressDisplay:
    """A live bar on a terminal; one line per log step otherwise (log files, CI)."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.total, self.start, self.enabled = total, start, enabled
        self.tty = sys.stdout.isatty()
        self._t0, self._s0 = None, start
        self._bar = None
        if enabled and self.tty:
            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
            )
            self._task = self._bar.add_task("train", total=total, completed=start, rate="", info="")
            self._bar.start()

    def rate(self, step: int) -> float:
        if self._t0 is None or step <= self._s0:
            return float("nan")
        return (step - self._s0) / (time.perf_counter() - self._t0)

    def step(self, step: int) -> None:
        """Called after every step; the clock starts after the first (compiling) step."""
        if self._t0 is None:
            self._t0, self._s0 = time.perf_counter(), step
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        r = self.rate(step)
        eta = format_duration((self.total - step) / r) if r == r and r > 0 else "?"
        info = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=step, rate=f"{r:.2f} steps/s", info=info)
        else:
            print(f"step {step}/{self.total} | {info} | {r:.2f} steps/s | ETA {eta}", flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            (self._bar.console if self._bar else console).print(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
