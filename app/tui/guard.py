"""A failure of the person's files, disk or database is one line on screen, and the app goes on.

The chat store raises a `CatteryError` when the database is busy, full, read-only or
damaged, from any call; a file written where the person asked (an export, a new
models folder) raises `OSError`. Neither is a bug, and neither may end the app or
the worker that hit it, or take away what is on screen: every handler that touches
the store or the disk runs its work inside `reported()`, which turns either into the
one line that is shown, and tells the handler whether it worked.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from app.errors import CatteryError, disk_error

log = logging.getLogger("cattery.tui")

# What the environment throws at the app: the person's to fix, never a bug of ours.
ENVIRONMENT: tuple[type[BaseException], ...] = (CatteryError, OSError)


def error_line(exc: BaseException, what: str = "", where: str = "app") -> str:
    """The line to show for `exc`: a CatteryError says it all; an OSError says what could not be done.

    A core message naming a command-line flag names the app's control instead (app/tui/wording.py).
    """
    from app.tui.wording import in_app

    if isinstance(exc, OSError) and not isinstance(exc, CatteryError):
        exc = disk_error(exc, what)
    return in_app(" ".join(str(exc).split()), where) or type(exc).__name__


@dataclass
class Attempt:
    """How a guarded piece of work went: `ok`, or the line that was shown."""

    ok: bool = True
    error: str | None = None


@contextlib.contextmanager
def reported(
    node: Any,
    what: str = "",
    *,
    severity: str = "error",
    timeout: float = 10.0,
    show: Callable[[str], object] | None = None,
    outcome: str = "",
) -> Iterator[Attempt]:
    """Run the block; a CatteryError or OSError is shown (a notification, or `show(line)`) and swallowed.

    `node` is any widget, screen or the app (its `notify` is thread-safe, so this works
    in thread workers too; `show` is for the UI thread only). `what`: what was being done,
    for an OSError's line; `outcome`: what it means for the person ("not sent: it stays in
    the box"), put before the reason. Anything else still raises: a bug is not hidden here.
    """
    attempt = Attempt()
    try:
        yield attempt
    except ENVIRONMENT as exc:
        attempt.ok = False
        reason = error_line(exc, what)
        attempt.error = f"{outcome}: {reason}" if outcome else reason
        log.info("shown to the user: %s", attempt.error)
        if show is not None:
            show(attempt.error)
        else:
            node.notify(attempt.error, severity=severity, timeout=timeout)
