"""Running the app in a real terminal: the terminal for Textual, file descriptor 2 for a log.

llama.cpp writes to fd 2 from C; inside a full-screen app that would scribble over
the screen. Textual gets a copy of the terminal's fd instead, and fd 2 points at
a log file while the app runs.
"""

from __future__ import annotations

import logging
import os
import sys

from app.session.launch import Launch
from app.session.workspace import Workspace


def run_app(ws: Workspace, launch: Launch) -> int:
    # textual-image asks the terminal what it can draw; that must happen before Textual
    # takes over the terminal's input.
    from app.tui.widgets.avatar import prepare_pictures

    prepare_pictures(str(ws.settings.get("ui", "images", "auto")))
    from app.tui.app import CatteryApp

    ws.paths.log_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=ws.paths.log_dir / "cattery.log",
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    saved = os.dup(2)
    terminal = open(saved, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    old_streams = sys.stderr, sys.__stderr__
    app = CatteryApp(ws, launch)
    with (ws.paths.log_dir / "stderr.log").open("a") as log:
        os.dup2(log.fileno(), 2)
        sys.stderr = sys.__stderr__ = terminal
        try:
            app.run()
        finally:
            terminal.flush()
            sys.stderr, sys.__stderr__ = old_streams
            os.dup2(saved, 2)
            os.close(saved)
            app.engine.close()
            ws.close()
    return int(app.return_code or 0)
