"""The open chat's thinking choices (F12): for a thinking model, whether it thinks, whether its
reasoning goes back into later prompts, and a budget for it.

Saved with the chat (`ChatSession.set_thinking`); the dialog says what the loaded format does with a
reasoning block, so a choice that cannot apply (a format without one) is seen as such.
"""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static

from app.errors import CatteryError
from app.prompt.reasoning import ReasoningMarkers
from app.session.thinking import MAX_BUDGET, ThinkingPrefs
from app.tui.keys import bindings
from app.tui.plain import plain
from app.tui.screens.dialogs import SaveOrCancel


def format_line(markers: ReasoningMarkers | None, format_name: str) -> str:
    if markers is None:
        return (
            f"The format in use ({format_name}) has no reasoning block: these choices apply once a thinking "
            "model's format or template is used."
        )
    where = "its GGUF chat template" if markers.origin == "template" else f"the {format_name} format"
    opened = " The prompt opens the block: each reply starts thinking." if markers.opened else ""
    switch = "" if markers.skip else " It has no way to skip thinking."
    if markers.switch:
        switch = f" Thinking off renders the template with its own switch ({markers.switch} = false)."
    return f"Reasoning is written between {markers.start} and {markers.end} ({where}).{opened}{switch}"


class ThinkingScreen(SaveOrCancel, ModalScreen[ThinkingPrefs | None]):
    """Dismissed with the choices to save, or None when cancelled."""

    BINDINGS: ClassVar[list[Binding]] = bindings("editor")

    def __init__(self, title: str, prefs: ThinkingPrefs, about: str) -> None:
        super().__init__(classes="dialog")
        self.title_text = title
        self.prefs = prefs
        self.about = about

    def compose(self) -> ComposeResult:
        with Vertical(id="thinking-dialog"):
            yield Label(plain(self.title_text), classes="dialog-title")
            yield Static(plain(self.about), classes="hint")
            yield Checkbox("Let the model think", self.prefs.enabled, id="thinking-enabled")
            yield Checkbox("Keep its reasoning in later prompts", self.prefs.keep, id="thinking-keep")
            with Horizontal(id="thinking-numbers"):
                yield Label("Thinking budget (tokens, 0: none)", classes="note-label")
                yield Input(str(self.prefs.budget), type="integer", id="thinking-budget", max_length=8)
            yield Static(
                "Left out of later prompts (the default), the reasoning is still saved and shown folded (t, "
                "Ctrl+B). With a budget, the block is closed for the model after that many tokens. "
                "Ctrl+S saves · Esc cancels",
                classes="hint",
            )
            yield Static("", classes="error", id="thinking-error")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Save", variant="primary", id="save")

    def on_mount(self) -> None:
        self.query_one("#thinking-enabled", Checkbox).focus()

    def current(self) -> ThinkingPrefs:
        raw = self.query_one("#thinking-budget", Input).value.strip() or "0"
        if not raw.isdigit() or int(raw) > MAX_BUDGET:
            raise CatteryError(f"the budget is a number of tokens from 0 to {MAX_BUDGET}")
        return ThinkingPrefs(
            keep=self.query_one("#thinking-keep", Checkbox).value,
            enabled=self.query_one("#thinking-enabled", Checkbox).value,
            budget=int(raw),
        )

    def action_save(self) -> None:
        try:
            prefs = self.current()
        except CatteryError as exc:
            self.query_one("#thinking-error", Static).update(plain(str(exc)))
            return
        self.dismiss(prefs)
