"""How long work reports how far it is, and the one line a user reads of it.

Converting, merging, unpacking and quantizing tell their callback the tensors done of
the total, the bytes done of the total (tensors differ in size by a factor of a thousand,
so time left is reckoned on bytes when they are known), and the tensor at hand. The
command line and the Workshop screen show the same line, made here; `ProgressPrinter` is
the command line's one printer of it, for downloads as well (which report a
`DownloadStatus`, with the speed a transfer has and a conversion does not).

Not `rich.progress`: its live display redraws from a thread of its own and prints its
own columns; one plain line keeps what a user (and a log) reads the same.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from app.units import fmt_size

if TYPE_CHECKING:
    from app.hub.download import DownloadStatus


class Progress(Protocol):
    def __call__(self, done: int, total: int, what: str = "", nbytes: int = 0, total_bytes: int = 0) -> None: ...


class TensorCounter:
    """Reports tensors as they are done, with the bytes they add up to, to a `Progress` (or none)."""

    def __init__(self, progress: Progress | None, sizes: Sequence[int]) -> None:
        self.progress = progress
        self.sizes = sizes
        self.total_bytes = sum(sizes)
        self.done = 0
        self.nbytes = 0

    def step(self, what: str) -> None:
        self.nbytes += self.sizes[self.done]
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.sizes), what, self.nbytes, self.total_bytes)


def fmt_duration(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Meter:
    """Turns reports into text; its clock restarts when a new step starts (the count falls or the total changes)."""

    MIN_ELAPSED = 1.0  # seconds before a time left is guessed: the first tensors say little

    def __init__(self, unit: str = "tensors", clock: Callable[[], float] = time.monotonic) -> None:
        self.unit = unit
        self.clock = clock
        self._started = clock()
        self._step: tuple[int, int] = (0, 0)
        self._last = 0

    @staticmethod
    def fraction(done: int, total: int, nbytes: int = 0, total_bytes: int = 0) -> float:
        if total_bytes > 0:
            return min(1.0, nbytes / total_bytes)
        return min(1.0, done / total) if total > 0 else 1.0

    def line(self, done: int, total: int, what: str = "", nbytes: int = 0, total_bytes: int = 0) -> str:
        step = (total, total_bytes)
        if step != self._step or done < self._last:
            self._step, self._started = step, self.clock()
        self._last = done
        parts = []
        if total > 0:
            parts.append(f"{done}/{total} {self.unit}")
        if total_bytes > 0:
            parts.append(f"{fmt_size(nbytes)} of {fmt_size(total_bytes)}")
        fraction = self.fraction(done, total, nbytes, total_bytes)
        parts.append(f"{int(100 * fraction)}%")
        elapsed = self.clock() - self._started
        if 0 < fraction < 1 and elapsed >= self.MIN_ELAPSED:
            parts.append(f"{fmt_duration(elapsed * (1 - fraction) / fraction)} left")
        text = " · ".join(parts)
        return f"{text} · {what}" if what else text


class ProgressPrinter:
    """A `Progress` that prints: one line on stderr, redrawn in place in a terminal.

    Without a terminal (a log, CI) a line is printed every `every` percent, without the
    tensor names, so that a log stays readable. Call `end_line()` before printing anything
    else mid-way, so that the text does not land on the progress line.
    """

    def __init__(self, label: str, unit: str = "tensors", every: int = 25) -> None:
        self.label = label
        self.meter = Meter(unit)
        self.every = every
        self.tty = sys.stderr.isatty()
        self._last_pct = -1
        self._open = False

    def __call__(self, done: int, total: int, what: str = "", nbytes: int = 0, total_bytes: int = 0) -> None:
        fraction = self.meter.fraction(done, total, nbytes, total_bytes)
        line = self.meter.line(done, total, what if self.tty else "", nbytes, total_bytes)
        self._show(fraction, f"{self.label}: {line}", end_at_full=True)

    def download(self, status: DownloadStatus) -> None:
        """A download's line: bytes, percent, speed and time left from the transfer's own rate."""
        pct = int(100 * status.done / status.total) if status.total else 100
        eta = status.eta
        left = f"{int(eta // 60)}:{int(eta % 60):02d} left" if eta is not None else ""
        done, total, speed = fmt_size(status.done), fmt_size(status.total), fmt_size(status.speed)
        self._show(pct / 100, f"{self.label}  {done} / {total} ({pct}%)  {speed}/s  {left}", end_at_full=False)

    def _show(self, fraction: float, text: str, *, end_at_full: bool) -> None:
        if self.tty:
            width = shutil.get_terminal_size((100, 24)).columns - 1
            self._rewrite(f"{text[:width]:<{width}}")
            if end_at_full and fraction >= 1:
                self.end_line()
            return
        pct = int(100 * fraction)
        if pct >= self._last_pct + self.every or (fraction >= 1 and pct != self._last_pct):
            self._last_pct = pct
            print(text, file=sys.stderr, flush=True)

    def _rewrite(self, text: str) -> None:
        from app.terminal import rewrite_line

        rewrite_line(sys.stderr, text)
        self._open = True
        sys.stderr.flush()

    def end_line(self) -> None:
        if self._open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._open = False
