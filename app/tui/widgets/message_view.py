"""One message of the chat: avatar, speaker, which alternative is shown, and the text as Markdown.

A message can take the focus; its keys (edit, delete, branch, copy, swipe) act on
it, and the chat screen carries them out: the view only says what was asked.
"""

from __future__ import annotations

import time
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Markdown, Static

from app.chats.store import StoredMessage
from app.tui.keys import bindings
from app.tui.widgets.avatar import Avatar


def header_text(speaker: str, m: StoredMessage | None, writing: str = "") -> str:
    parts = [speaker]
    if m is not None and len(m.swipes) > 1:
        parts.append(f"‹ {m.active + 1}/{len(m.swipes)} ›")
    if writing:
        parts.append(writing)
    elif m is not None and m.state == "stopped":
        parts.append("(stopped)")
    if m is not None and m.created_at:
        parts.append(time.strftime("%H:%M", time.localtime(m.created_at)))
    return "  ".join(parts)


class MessageView(Widget, can_focus=True):
    BINDINGS: ClassVar[list[Binding]] = bindings("message")

    class Action(Message):
        """A key pressed on a message: the chat screen does the work."""

        def __init__(self, view: MessageView, name: str, step: int = 0) -> None:
            super().__init__()
            self.view = view
            self.name = name
            self.step = step

    def __init__(
        self,
        index: int,
        message: StoredMessage | None,
        speaker: str,
        role: str,
        avatar: bytes | None = None,
        image_mode: str = "auto",
    ) -> None:
        super().__init__(classes=role)
        self.index = index
        self.message = message
        self.speaker = speaker
        self.role = role
        self.avatar = avatar
        self.image_mode = image_mode
        self.writing = ""

    @property
    def message_id(self) -> int | None:
        return self.message.id if self.message is not None else None

    @property
    def text(self) -> str:
        return self.message.text if self.message is not None else ""

    def compose(self) -> ComposeResult:
        yield Avatar(self.speaker, self.avatar, mode=self.image_mode)
        with Vertical(classes="body-column"):
            yield Static(header_text(self.speaker, self.message, self.writing), classes="speaker")
            yield Markdown(self.text, open_links=False)

    @property
    def body(self) -> Markdown:
        return self.query_one(Markdown)

    def show(self, index: int, message: StoredMessage) -> None:
        """Show a message's current state (after an edit, a swipe, a finished reply)."""
        changed = self.message is None or message.text != self.text
        self.index = index
        self.message = message
        self.writing = ""
        self.remove_class("-writing")
        self.set_class(message.state == "stopped", "-stopped")
        self._update_header()
        if changed and self.children:
            self.body.update(message.text)

    def set_writing(self, note: str) -> None:
        self.writing = note
        self.set_class(bool(note), "-writing")
        self._update_header()

    def _update_header(self) -> None:
        for header in self.query(".speaker").results(Static):  # none yet before the view is composed
            header.update(header_text(self.speaker, self.message, self.writing))

    # The keys only say what was asked; the screen knows the chat.
    def action_edit(self) -> None:
        self.post_message(self.Action(self, "edit"))

    def action_delete(self) -> None:
        self.post_message(self.Action(self, "delete"))

    def action_delete_after(self) -> None:
        self.post_message(self.Action(self, "delete_after"))

    def action_branch(self) -> None:
        self.post_message(self.Action(self, "branch"))

    def action_copy(self) -> None:
        self.post_message(self.Action(self, "copy"))

    def action_swipe(self, step: int) -> None:
        self.post_message(self.Action(self, "swipe", step))

    def action_move(self, step: int) -> None:
        self.post_message(self.Action(self, "move", step))

    def action_details(self) -> None:
        self.post_message(self.Action(self, "details"))

    def action_back(self) -> None:
        self.post_message(self.Action(self, "back"))
