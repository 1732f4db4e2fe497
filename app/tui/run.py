"""Running the app in a real terminal: the terminal for Textual, file descriptor 2 for a log.

llama.cpp writes to fd 2 from C; inside a full-screen app that would scribble over
the screen. Textual gets a copy of the terminal's fd instead, and fd 2 points at
a log file while the app runs.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

from app.errors import disk_error
from app.session.launch import Launch
from app.session.workspace import Workspace


def _open_logs(folder: Path) -> tuple[IO[str], str | None]:
    """The file fd 2 goes to while the app runs, and why it is /dev/null if the log folder cannot be written.

    A read-only or full home must not stop the app before it starts: llama.cpp's chatter
    is then dropped instead of logged, and the app says so.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stderr_log = (folder / "stderr.log").open("a")
    except OSError as exc:
        return open(os.devnull, "a"), f"{disk_error(exc, 'write the logs')}; logging is off for this run"
    try:
        logging.basicConfig(
            filename=folder / "cattery.log",
            level=logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
    except OSError as exc:
        return stderr_log, f"{disk_error(exc, 'write the log')}; the app's own log is off for this run"
    return stderr_log, None


def run_app(ws: Workspace, launch: Launch, engine: Any = None) -> int:
    """The app; `engine`: a remote engine connected already (`--engine`), else the local one."""
    # textual-image asks the terminal what it can draw; that must happen before Textual
    # takes over the terminal's input.
    from app.tui.widgets.avatar import prepare_pictures

    prepare_pictures(ws.settings.ui.images)
    from app.tui.app import CatteryApp

    log, problem = _open_logs(ws.paths.log_dir)
    saved = os.dup(2)
    terminal = open(saved, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    old_streams = sys.stderr, sys.__stderr__
    if engine is not None:
        app = CatteryApp(ws, launch, engine=engine)
        if problem:
            app.start_notes.append(problem)
    elif problem:  # llama.cpp's own log cannot be written either: the engine runs without one
        from app.engine.engine import Engine

        app = CatteryApp(ws, launch, engine=Engine(log_file=None))
        app.start_notes.append(problem)
    else:
        app = CatteryApp(ws, launch)
    with log:
        os.dup2(log.fileno(), 2)
        sys.stderr = sys.__stderr__ = terminal
        try:
            app.run()
        finally:
            terminal.flush()
            sys.stderr, sys.__stderr__ = old_streams
            os.dup2(saved, 2)
            os.close(saved)
            for engine in app.engines():
                engine.close()
            ws.close()
    return int(app.return_code or 0)
