"""What a user sees of a bug: one line and where the whole story was written.

The command line and the full-screen app both end here when something that is not a
user's mistake goes wrong. The traceback goes to the log; the person gets a line to
report. Tests set CATTERY_DEBUG=1 so they see the real exception instead.
"""

from __future__ import annotations

import datetime
import os
import traceback


def debugging() -> bool:
    """True where bugs should raise as they are (tests, developers)."""
    return bool(os.environ.get("CATTERY_DEBUG"))


def report_crash(error: BaseException) -> str:
    """Append `error`'s traceback to the log; return the one line to show the user."""
    from app.paths import get_paths

    text = " ".join(str(error).split())
    summary = f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__
    try:
        log = get_paths().log_dir / "cattery.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"\n{datetime.datetime.now().isoformat(timespec='seconds')} internal error\n")
            f.write("".join(traceback.format_exception(type(error), error, error.__traceback__)))
    except OSError:
        return f"{summary} (the log could not be written)"
    return f"{summary} (please report it; details in {log})"
