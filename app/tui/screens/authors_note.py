"""The Author's Note of the open chat (F10): its text, depth, frequency and role.

The dialog says, as the numbers change, whether the next reply gets the note; Ctrl+S
saves it with the chat, "Remove" clears it, Esc leaves it as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static, TextArea

from app.errors import CatteryError
from app.prompt.segments import Message
from app.session.authors_note import NOTE_ROLES, AuthorsNote
from app.tui.keys import bindings
from app.tui.plain import plain

HINT = (
    "Goes into the prompt as a message of its own, DEPTH messages from the end (0: right before the reply), "
    "every N of your messages (1: always, 0: never). {{char}} and {{user}} work. Ctrl+S saves · Esc cancels"
)


class AuthorsNoteScreen(ModalScreen[AuthorsNote | None]):
    """Dismissed with the note to save (empty text: remove it), or None when cancelled."""

    BINDINGS: ClassVar[list[Binding]] = bindings("editor")

    def __init__(self, title: str, note: AuthorsNote | None, history: Sequence[Message]) -> None:
        super().__init__(classes="dialog")
        self.title_text = title
        self.note = note or AuthorsNote()
        self.history = list(history)

    def compose(self) -> ComposeResult:
        with Vertical(id="note-dialog"):
            yield Label(plain(self.title_text), classes="dialog-title")
            yield TextArea(self.note.text, soft_wrap=True, id="note-text")
            with Horizontal(id="note-numbers"):
                yield Label("Depth", classes="note-label")
                yield Input(str(self.note.depth), type="integer", id="note-depth", max_length=5)
                yield Label("Every", classes="note-label")
                yield Input(str(self.note.every), type="integer", id="note-every", max_length=5)
                yield Label("Role", classes="note-label")
                with RadioSet(id="note-role"):
                    for role in NOTE_ROLES:
                        yield RadioButton(role, value=role == self.note.role, id=f"note-role-{role}")
            yield Static("", id="note-when", classes="hint")
            yield Static(HINT, classes="hint")
            yield Static("", classes="error", id="note-error")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Remove", variant="error", id="remove")
                yield Button("Save", variant="primary", id="save")

    def on_mount(self) -> None:
        area = self.query_one("#note-text", TextArea)
        area.focus()
        area.move_cursor(area.document.end)
        self._show_when()

    def _role(self) -> str:
        pressed = self.query_one("#note-role", RadioSet).pressed_button
        label = str(pressed.label) if pressed is not None else self.note.role
        return label if label in NOTE_ROLES else "system"

    def current(self) -> AuthorsNote:
        """The note as the dialog now says; a number out of range is one line (CatteryError)."""

        def number(widget_id: str, what: str) -> int:
            text = self.query_one(widget_id, Input).value.strip()
            if not text or not text.lstrip("-").isdigit():
                raise CatteryError(f"{what} must be a whole number")
            return int(text)

        return AuthorsNote(
            text=self.query_one("#note-text", TextArea).text,
            depth=number("#note-depth", "the depth"),
            every=number("#note-every", "the frequency"),
            role=self._role(),
        )

    @on(Input.Changed)
    @on(TextArea.Changed)
    @on(RadioSet.Changed)
    def _show_when(self) -> None:
        when = self.query_one("#note-when", Static)
        try:
            note = self.current()
        except CatteryError as exc:
            when.update(plain(str(exc)))
            return
        n = note.turns_until(self.history)
        if not note.text.strip():
            when.update(plain("No note: write one above (or Remove leaves the chat without one)."))
        elif n is None:
            when.update(plain("Frequency 0: the note is kept but never inserted."))
        elif n == 0:
            where = "right before the reply" if note.depth == 0 else f"{note.depth} messages from the end"
            when.update(plain(f"Your next message gets it, as a {note.role} message {where}."))
        else:
            when.update(plain(f"Inserted in {n} more of your messages (every {note.every})."))

    def action_save(self) -> None:
        try:
            note = self.current()
        except CatteryError as exc:
            self.query_one("#note-error", Static).update(plain(str(exc)))
            return
        self.dismiss(note)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        elif event.button.id == "remove":
            self.dismiss(AuthorsNote(text="", depth=self.note.depth, every=self.note.every, role=self.note.role))
        else:
            self.action_cancel()
