"""The Settings screen's system-prompt presets: a preset fills the box to edit, and Save keeps the
preset only while its text is unchanged (an edited text is the user's own)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.widgets import Select, TextArea

from app.prompt.presets import get_preset
from app.untrusted import parse_toml
from tests.tui_helpers import make_app, wait_until


def test_a_preset_fills_the_box_and_is_saved_until_edited(cattery_home: Path) -> None:
    app = make_app(card_ref="none", card_explicit=True)
    app.launch.load_model = False
    narrator = get_preset("narrator").text
    settings_file = cattery_home / "config" / "settings.toml"

    def saved() -> dict:
        return parse_toml(settings_file.read_text(), "settings.toml")["chat"]

    async def run() -> None:
        async with app.run_test(size=(110, 34)) as pilot:
            app.switch_mode("settings")
            await wait_until(pilot, lambda: app.current_mode == "settings" and app.screen.is_current, what="settings")
            screen = app.screen
            await wait_until(pilot, lambda: len(screen.presets) > 0, what="the presets offered")
            box = screen.query_one("#system", TextArea)
            select = screen.query_one("#system-preset", Select)
            assert select.value == "" and box.text == "You are a helpful assistant."
            select.value = "narrator"
            await wait_until(pilot, lambda: box.text == narrator, what="the preset's text in the box")
            screen.query_one("#prefer-card", Select).value = False
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: settings_file.is_file() and saved().get("system_preset") == "narrator")
            assert saved()["prefer_card_prompt"] is False and saved()["system"] == narrator
            assert app.ws.settings.chat.system_preset == "narrator"
            box.text = narrator + " Keep it short."
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: saved().get("system_preset") == "", what="the edited text saved")
            assert saved()["system"] == narrator + " Keep it short."

    asyncio.run(run())


def test_f11_chooses_a_preset_for_this_chat_and_the_prompt_follows(cattery_home: Path, engine) -> None:
    """F11: a preset for the open chat only; the chat's next prompt starts from it at once, another
    chat keeps the settings' prompt, and clearing the choice brings the settings' back."""
    from app.session.system_prompt import chat_preset
    from app.tui.screens.system_preset import SystemPresetScreen

    app = make_app(engine, card_ref="none", card_explicit=True)
    narrator = get_preset("narrator").text

    async def choose(pilot, name: str) -> None:
        await pilot.press("f11")
        await wait_until(pilot, lambda: isinstance(app.screen, SystemPresetScreen), what="the dialog")
        dialog = app.screen
        dialog.query_one("#preset-name", Select).value = name
        await pilot.pause()
        if name:
            assert narrator[:40] in str(dialog.query_one("#preset-text").render())
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: not isinstance(app.screen, SystemPresetScreen), what="the choice")

    async def run() -> None:
        async with app.run_test(size=(110, 34)) as pilot:
            await wait_until(pilot, lambda: app.session is not None and app.session.ready, what="the chat")
            s = app.session
            await choose(pilot, "narrator")
            wanted = narrator.strip().replace("{{user}}", s.user_name)  # macros expanded, as in every prompt
            await wait_until(
                pilot, lambda: s.builder is not None and s.builder.system == wanted, what="use", timeout=30
            )
            assert chat_preset(app.ws, s.chat_id) == "narrator" and app.ws.settings.chat.system_preset == ""
            await choose(pilot, "")
            await wait_until(
                pilot, lambda: s.builder.system == "You are a helpful assistant.", what="cleared", timeout=30
            )
            assert chat_preset(app.ws, s.chat_id) == ""

    asyncio.run(run())
