"""Pictures of the main screens (pytest-textual-snapshot): what a layout change does shows at a glance.

The app runs for real on the bundled model; to keep the pictures the same on every
machine, the chats get fixed dates, times are shown in UTC, the cursor does not
blink, the KV cache starts empty, and the load report's machine-dependent numbers (load time, threads) are
set to fixed values before the picture is taken. Update them with
`pytest tests/tui/test_tui_snapshots.py --snapshot-update` and look at the SVGs.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import pytest

from app.tui.app import CatteryApp
from tests.conftest import DEADLINE
from tests.tui_helpers import chat_screen, make_app

SIZE = (110, 32)
SETTLE_S = DEADLINE  # generous: a loaded machine is slower, never different
STAMP = 1767350400.0  # 2026-01-02 10:40 UTC


HOME = Path("/tmp/cattery-snapshot-home")  # a fixed place: the settings screen shows its path


@pytest.fixture(autouse=True)
def fixed_home(monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.rmtree(HOME, ignore_errors=True)
    monkeypatch.setenv("CATTERY_HOME", str(HOME))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield HOME
    monkeypatch.delenv("TZ")
    time.tzset()
    shutil.rmtree(HOME, ignore_errors=True)


def fixed_app(engine) -> CatteryApp:
    """A chat with Mochi as a user left it: a question, a reply with two alternatives, a stopped one."""
    from app.session.chat import start_session
    from app.session.workspace import Workspace

    ws = Workspace()
    s = start_session(ws, "bundled:mochi", greeting=0)
    store = ws.store
    store.rename_chat(s.chat_id, "Questions for Mochi")
    store.add_message(s.chat_id, "user", "Why do cats purr?")
    reply = store.add_message(
        s.chat_id,
        "assistant",
        "Purring comes from the **laryngeal muscles** twitching at 25-150 Hz, which makes the vocal folds"
        " separate and the air vibrate as I breathe in *and* out. Nyan",
    )
    store.add_swipe(reply, "It is the larynx, humming along with every breath. Nyan")
    store.select_swipe(reply, 0)
    store.add_message(s.chat_id, "user", "And why do they knead?")
    store.add_message(s.chat_id, "assistant", "Kneading is a kitten habit: it", state="stopped")
    with store.lock:
        store.conn.execute("UPDATE messages SET created_at = ?", (STAMP,))
        store.conn.execute("UPDATE chats SET created_at = ?, updated_at = ?", (STAMP, STAMP))
    store.set_state("last_chat", str(s.chat_id))
    ws.close()
    engine.reset()  # an empty KV cache, whatever ran before: "next turn" counts the whole prompt
    app = make_app(engine)
    report = dataclasses.replace(engine.report, load_seconds=0.5, threads=2, threads_batch=2)
    app.set_reactive(CatteryApp.model_status, dataclasses.replace(app.model_status, report=report))
    return app


async def settled(pilot) -> None:
    app = pilot.app
    chat = chat_screen(app)
    start = time.monotonic()
    while chat.preview is None and time.monotonic() - start < SETTLE_S:
        await pilot.pause(0.05)
    await pilot.pause(0.3)


def test_chat_screen(snap_compare, engine) -> None:
    assert snap_compare(fixed_app(engine), terminal_size=SIZE, run_before=settled)


def test_chat_with_a_message_selected(snap_compare, engine) -> None:
    async def select(pilot) -> None:
        await settled(pilot)
        await pilot.press("ctrl+up", "up")
        await pilot.pause(0.3)

    assert snap_compare(fixed_app(engine), terminal_size=SIZE, run_before=select)


def loaded(screen) -> bool:
    """The screen has read what it shows in the background (cards, model headers)."""
    rows = getattr(screen, "rows", None)
    if rows is not None:
        return bool(rows) and all(r.info or r.error for r in rows.values())
    return bool(getattr(screen, "characters", True))


def on_screen(key: str):
    async def go(pilot) -> None:
        await settled(pilot)
        await pilot.press(key)
        start = time.monotonic()
        await pilot.pause(0.2)
        while not loaded(pilot.app.screen) and time.monotonic() - start < SETTLE_S:
            await pilot.pause(0.05)
        await pilot.pause(0.5)

    return go


def test_characters_screen(snap_compare, engine) -> None:
    assert snap_compare(fixed_app(engine), terminal_size=SIZE, run_before=on_screen("f3"))


def test_models_screen(snap_compare, engine) -> None:
    assert snap_compare(fixed_app(engine), terminal_size=SIZE, run_before=on_screen("f4"))


def test_chats_screen(snap_compare, engine) -> None:
    assert snap_compare(fixed_app(engine), terminal_size=SIZE, run_before=on_screen("f5"))


def test_settings_screen(snap_compare, engine) -> None:
    assert snap_compare(fixed_app(engine), terminal_size=SIZE, run_before=on_screen("f6"))


def test_help_screen(snap_compare, engine) -> None:
    assert snap_compare(fixed_app(engine), terminal_size=SIZE, run_before=on_screen("f1"))


def test_snapshots_are_not_stale() -> None:
    """Every picture on disk belongs to a test here (a renamed test leaves its old picture behind)."""
    folder = Path(__file__).parent / "__snapshots__" / "test_tui_snapshots"
    names = {p.stem for p in folder.glob("*.svg")} if folder.is_dir() else set()
    tests = {n for n in globals() if n.startswith("test_") and n != "test_snapshots_are_not_stale"}
    assert names <= tests, names - tests
