"""The full-screen app and hostile text (issue 13): escapes never reach the terminal; a bug is one line.

The first test runs the real `cattery` in a pseudo-terminal and reads every byte it
draws; the card it opens carries escape sequences in its name, greeting and
description, as a card from a stranger can.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from app.tui.app import CatteryApp
from tests.conftest import run_cattery
from tests.terminal import Terminal
from tests.tui_helpers import SIZE, make_app

TITLE = "\x1b]0;PWNED-TITLE\x07"  # would retitle the terminal window
MOVE = "\x1b[5;7HMOVED-CURSOR"  # would draw somewhere else on the screen
HIDE = "\x1b[8mHIDDEN-TEXT\x1b[0m"  # would hide what follows
BIDI = "\u202eDESREVER"  # would show the rest right to left


def _hostile_card(path: Path) -> Path:
    data = json.loads(Path("assets/cards/mochi.json").read_text(encoding="utf-8"))
    data["data"]["name"] = data["data"]["nickname"] = f"Evil{TITLE}Cat"
    data["data"]["first_mes"] = f"Hello {MOVE} and {HIDE} and {BIDI} end."
    data["data"]["alternate_greetings"] = []
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_escape_sequences_from_a_card_never_reach_the_terminal(cattery_home: Path, tmp_path: Path) -> None:
    card = _hostile_card(tmp_path / "evil.json")
    imported = run_cattery("cards", "import", str(card), home=cattery_home)
    assert imported.returncode == 0, imported.stderr
    assert "\x1b" not in imported.stdout + imported.stderr  # the CLI showed the name's escape visibly
    term = Terminal(["--card", "Evil" + TITLE + "Cat", "--new"], cattery_home)
    try:
        term.wait_for("MOVED-CURSOR")  # the greeting is drawn…
        term.wait_for("SmolLM2-135M-Instruct.Q4_1 · ")  # …and the model loaded
    finally:
        term.kill()
    drawn = bytes(term.output)
    for sequence in (TITLE, MOVE, HIDE, BIDI):
        assert sequence.encode() not in drawn, f"{sequence!r} reached the terminal"
    assert b"\x1b]0;PWNED" not in drawn  # (Textual ends its own OSC 22 with a bell: \x07 alone proves nothing)
    assert "\u202e".encode() not in drawn
    # What is left of them is shown as text.
    assert b"HIDDEN-TEXT" in drawn and b"DESREVER" in drawn and b"PWNED-TITLE" in drawn


def test_a_bug_in_the_app_is_one_line_and_a_log(
    cattery_home: Path, engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CATTERY_DEBUG")
    app = make_app(engine, card_ref="none", card_explicit=True)

    def boom() -> None:
        raise RuntimeError("a bug in a handler")

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.2)
            app.call_later(boom)
            for _ in range(600):  # the app ends itself: Pilot's own pause would wait on a closed app
                if app.return_code is not None:
                    break
                await asyncio.sleep(0.05)

    asyncio.run(run())
    assert app.return_code == 70
    # Kept to be printed, or printed already (the app prints it as it shuts down): one line either way.
    shown = [str(r) for r in app._exit_renderables] or [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(shown) == 1 and shown[0].startswith("cattery: internal error: RuntimeError: a bug in a handler")
    assert "\n" not in shown[0] and "Traceback" not in shown[0]
    log = (cattery_home / "logs" / "cattery.log").read_text(encoding="utf-8")
    assert "Traceback" in log and "a bug in a handler" in log


def test_the_app_strips_controls_in_every_widget() -> None:
    """The mechanism itself: Rich and Textual strip every control character once the app exists."""
    from rich.text import Text
    from textual.content import Content

    CatteryApp.__init__  # noqa: B018 - the import is what matters; strip_controls_everywhere runs in __init__
    from app.tui.safe_text import strip_controls_everywhere

    strip_controls_everywhere()
    for sample in (TITLE, MOVE, HIDE, BIDI, "\x9b31m", "\x00\x7f"):
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c == "\u202e" for c in Text(sample).plain)
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c == "\u202e" for c in Content(sample).plain)
    assert Text("a\nb\tc").plain == "a\nb\tc"
