"""Small modal dialogs: edit a text, confirm, ask for one line (a name, a path), show details."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, Input, Label, Static, TextArea

from app.tui.keys import bindings
from app.tui.plain import plain
from app.tui.screens.fitted import Fits


class SaveOrCancel:
    """A dialog's Save and Cancel buttons, and Esc: Save runs `action_save`, the rest dismiss with None."""

    def action_save(self) -> None:
        raise NotImplementedError

    def action_cancel(self) -> None:
        self.dismiss(None)  # type: ignore[attr-defined]

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()


class TitledText:
    """A dialog about one text, under a title."""

    def __init__(self, title: str, text: str) -> None:
        super().__init__(classes="dialog")  # type: ignore[call-arg]
        self.title_text = title
        self.text = text


class EditScreen(Fits, TitledText, ModalScreen[str | None]):
    """Edit a message (or any long text); Ctrl+S saves, Esc leaves it as it was."""

    BINDINGS: ClassVar[list[Binding]] = bindings("editor")

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(plain(self.title_text), classes="dialog-title")
            yield TextArea(self.text, soft_wrap=True, id="editor")
            yield Static("Ctrl+S saves · Esc cancels", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Save", variant="primary", id="save")

    def on_mount(self) -> None:
        area = self.query_one(TextArea)
        area.focus()
        area.move_cursor(area.document.end)

    def action_save(self) -> None:
        self.dismiss(self.query_one(TextArea).text)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_save() if event.button.id == "save" else self.action_cancel()


class ConfirmScreen(Fits, ModalScreen[bool]):
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("y,enter", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__(classes="dialog")
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(plain(self.question), classes="dialog-title")
            with Horizontal(classes="buttons"):
                yield Button("No", id="no")
                yield Button(self.yes, variant="error", id="yes")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class PathSuggester(Suggester):
    """Completes file and folder names as they are typed, as a shell would."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        expanded = os.path.expanduser(value)
        folder, _, start = expanded.rpartition(os.sep)
        base = Path(folder or os.sep) if expanded.startswith(os.sep) or folder else Path(".")
        try:
            names = sorted(p.name + (os.sep if p.is_dir() else "") for p in base.iterdir() if p.name.startswith(start))
        except OSError:
            return None
        names = [n for n in names if not n.startswith(".") or start.startswith(".")]
        if not names or names[0] == start:
            return None
        return value + names[0][len(start) :]


class AskScreen(Fits, ModalScreen[str | None]):
    """One line of text: a chat's new name, a file to import, where to export."""

    BINDINGS: ClassVar[list[Binding]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self, title: str, value: str = "", *, placeholder: str = "", path: bool = False, hint: str = ""
    ) -> None:
        super().__init__(classes="dialog")
        self.title_text = title
        self.value = value
        self.placeholder = placeholder
        self.path = path
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(plain(self.title_text), classes="dialog-title")
            yield Input(
                self.value,
                placeholder=self.placeholder,
                suggester=PathSuggester() if self.path else None,
                id="answer",
            )
            hint = self.hint or ("→ completes the name · Enter accepts · Esc cancels" if self.path else "")
            yield Static(hint, classes="hint")
            yield Static("", classes="error", id="ask-error")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if not value:
            return
        if self.path:
            value = os.path.expanduser(value)
        self.dismiss(value)

    def show_error(self, text: str) -> None:
        self.query_one("#ask-error", Static).update(plain(text))

    def action_cancel(self) -> None:
        self.dismiss(None)


class TextScreen(Fits, TitledText, ModalScreen[None]):
    """Read-only text: a reply's provenance, a card's details."""

    BINDINGS: ClassVar[list[Binding]] = [Binding("escape,enter,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(plain(self.title_text), classes="dialog-title")
            with VerticalScroll(id="details-text"):
                yield Static(plain(self.text))
            yield Static("Esc closes", classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)
