"""Building the real app for Pilot tests: a private CATTERY_HOME, the real engine, real SQLite."""

from __future__ import annotations

import time
from typing import Any

from app.engine.options import SamplerSettings
from app.session.launch import Launch
from app.session.workspace import Workspace
from app.tui.app import CatteryApp
from tests.conftest import DEADLINE

SIZE = (110, 34)


def greedy(max_tokens: int = 24, **kw: Any) -> SamplerSettings:
    return SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens, **kw)


def make_app(engine: Any = None, *, sampler: SamplerSettings | None = None, **launch: Any) -> CatteryApp:
    """The app on a fresh workspace (CATTERY_HOME is set by the `cattery_home` fixture).

    With `engine`, the session's shared model is used as loaded; without, the app loads
    the bundled model itself in the background, as `cattery` does.
    """
    ws = Workspace()
    ws.settings.set("ui", "cursor_blink", False)
    la = Launch(sampler=sampler or greedy(), load_model=engine is None, **launch)
    return CatteryApp(ws, la, engine=engine)


async def wait_until(pilot: Any, condition: Any, timeout: float = DEADLINE, what: str = "condition") -> None:
    start = time.monotonic()
    while not condition():
        await pilot.pause(0.05)
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}; {_where(pilot.app)}"


def _where(app: Any) -> str:
    """What the app showed when a wait ran out: a flaky wait under load is then readable from the log."""
    try:
        said = [n.message for n in app._notifications]
        s = app.session
        chat = f"chat {s.chat_id} with {s.char_name!r}" if s is not None else "no chat"
        return (
            f"mode {app.current_mode}, screen {type(app.screen).__name__}, focus {app.focused!r}, {chat}, "
            f"model {app.model_status.state}, notices {said[-5:]}"
        )
    except Exception as exc:  # only a diagnosis: never hide the timeout itself
        return f"(the app's state could not be read: {exc!r})"


async def wait_idle(pilot: Any, app: CatteryApp) -> None:
    """Until no turn runs and the model is settled."""
    chat = app.get_screen_stack("chat")[0]
    await wait_until(pilot, lambda: app.model_status.state in ("ready", "failed"), what="the model")
    await wait_until(pilot, lambda: chat.busy is None, what="the reply")
    await pilot.pause(0.2)


def chat_screen(app: CatteryApp) -> Any:
    return app.get_screen_stack("chat")[0]


async def send(pilot: Any, app: CatteryApp, text: str) -> None:
    """Type `text` into the chat box, send it, and wait until the reply is written."""
    from app.tui.widgets.chat_input import ChatInput

    chat = chat_screen(app)
    chat.query_one(ChatInput).text = text
    chat.query_one(ChatInput).focus()
    before = len(app.session.messages)  # type: ignore[union-attr]
    await pilot.press("enter")
    await wait_until(pilot, lambda: len(app.session.messages) >= before + 2, what="the reply")  # type: ignore[union-attr]
    await wait_idle(pilot, app)


async def answer(pilot: Any, app: Any, text: str) -> None:
    """Type `text` into the open one-line question dialog and press Enter."""
    from app.tui.screens.dialogs import AskScreen

    await wait_until(pilot, lambda: isinstance(app.screen, AskScreen), what="the dialog")
    dialog = app.screen
    dialog.query_one("#answer").value = text
    await pilot.press("enter")
    await wait_until(pilot, lambda: app.screen is not dialog, what="the dialog to close")
