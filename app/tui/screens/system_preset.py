"""The open chat's system prompt (F11): a system-prompt preset chosen for this chat, for its
character, or for every chat, with the preset's text shown before it is used.

The choice is stored where `session/system_prompt.py` looks (the chat's extra, the character's state,
the settings), and the chat's prompt is rebuilt from it at once. A card's own system prompt still
wins where the settings say so; the dialog says when that is the case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, RadioButton, RadioSet, Select, Static

from app.prompt.presets import SystemPreset
from app.tui.keys import bindings
from app.tui.plain import plain
from app.tui.screens.dialogs import SaveOrCancel

SCOPES = (("chat", "this chat"), ("character", "this character"), ("settings", "every chat"))
NONE = "(none: the settings' system prompt)"


@dataclass(frozen=True)
class PresetChoice:
    name: str  # "" clears the choice at that scope
    scope: str  # chat, character or settings


class SystemPresetScreen(SaveOrCancel, ModalScreen[PresetChoice | None]):
    """Dismissed with the choice to store, or None when cancelled."""

    BINDINGS: ClassVar[list[Binding]] = bindings("editor")

    def __init__(
        self, title: str, presets: list[SystemPreset], current: str, scope: str, has_character: bool, note: str
    ) -> None:
        super().__init__(classes="dialog")
        self.title_text = title
        self.presets = {p.name: p for p in presets}
        self.current = current if current in self.presets else ""
        self.scope = scope if scope in dict(SCOPES) else "chat"
        self.has_character = has_character
        self.note = note

    def compose(self) -> ComposeResult:
        with Vertical(id="preset-dialog"):
            yield Label(plain(self.title_text), classes="dialog-title")
            options = [(NONE, ""), *((f"{p.name}: {p.description}"[:100], p.name) for p in self.presets.values())]
            yield Select(options, value=self.current, allow_blank=False, id="preset-name")
            with VerticalScroll(id="preset-text-box"):
                yield Static("", id="preset-text")
            with RadioSet(id="preset-scope"):
                for scope, words in SCOPES:
                    if scope == "character" and not self.has_character:
                        continue
                    yield RadioButton(f"for {words}", value=scope == self.scope, id=f"preset-scope-{scope}")
            yield Static(plain(self.note), classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Use", variant="primary", id="save")

    def on_mount(self) -> None:
        self.query_one("#preset-name", Select).focus()
        self._show()

    @on(Select.Changed, "#preset-name")
    def _show(self) -> None:
        name = self.query_one("#preset-name", Select).value
        preset = self.presets.get(name) if isinstance(name, str) else None
        text = "The system prompt from the settings ([chat] system), or a choice made for a wider scope."
        if preset is not None:
            text = preset.text + (f"\n\n(after the chat) {preset.post_history}" if preset.post_history else "")
            text += f"\n\nfrom: {preset.source}" if preset.source else ""
        self.query_one("#preset-text", Static).update(plain(text))

    def action_save(self) -> None:
        name = self.query_one("#preset-name", Select).value
        pressed = self.query_one("#preset-scope", RadioSet).pressed_button
        scope = (pressed.id or "").removeprefix("preset-scope-") if pressed is not None else self.scope
        self.dismiss(PresetChoice(name if isinstance(name, str) else "", scope or "chat"))
