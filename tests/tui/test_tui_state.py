"""The app and its screens: the screens stand on app/tui/state.py, never on the App class, and
background jobs post messages rather than wait for the UI thread."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

TUI = ROOT / "app" / "tui"


def _imported(path: Path) -> set[str]:
    """Every module `path` names in an import, type hints included."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_no_screen_or_widget_imports_the_app_class_even_for_type_hints() -> None:
    screens = [*(TUI / "screens").glob("*.py"), *(TUI / "widgets").glob("*.py"), TUI / "state.py", TUI / "messages.py"]
    assert len(screens) > 10
    offenders = [p.relative_to(ROOT).as_posix() for p in screens if "app.tui.app" in _imported(p)]
    assert offenders == []


def test_the_modes_are_a_plain_class_attribute() -> None:
    from app.tui.app import CatteryApp

    assert set(CatteryApp.MODES) == {"chat", "characters", "models", "chats", "settings", "hub", "workshop"}


def test_no_background_job_waits_for_the_ui_thread() -> None:
    """Workers post messages (a blocking call_from_thread stalls a load or a download on a busy UI)."""
    waiting = [p.relative_to(ROOT).as_posix() for p in TUI.rglob("*.py") if "call_from_thread" in p.read_text()]
    assert waiting == []


def test_the_apps_attributes_are_its_shared_states(cattery_home: Path) -> None:
    from tests.tui_helpers import make_app

    app = make_app(card_ref="none", card_explicit=True)
    try:
        shared = app.shared
        assert app.ws is shared.ws and app.launch is shared.launch and app.engine is shared.engine
        assert app.session is None and shared.keymap == app.keymap and app.shown_messages == 60
        app.image_mode = "none"
        assert shared.image_mode == "none"
        app.start_notes.append("a note")
        assert shared.start_notes == ["a note"]
    finally:
        app.engine.close()
