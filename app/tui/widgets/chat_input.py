"""The message box: several lines, Enter sends, Ctrl+J (or Shift+Enter where the terminal
tells it apart) starts a new line. Its keys come from the keymap like every other."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea

from app.tui.keys import keys_of


class ChatInput(TextArea):
    class Submitted(Message):
        """Enter: the text to send; empty when the box was (the character speaks again)."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class SelectLast(Message):
        """Up in an empty box: go to the messages, as in most chat apps."""

    def __init__(self, keymap: dict[str, str] | None = None, **kwargs: object) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)  # type: ignore[arg-type]
        self.set_keys(keymap or {})

    def set_keys(self, keymap: dict[str, str]) -> None:
        self.send_keys = set(keys_of("input.send", keymap).split(","))
        self.newline_keys = set(keys_of("input.newline", keymap).split(","))
        self.select_keys = set(keys_of("input.select_last", keymap).split(","))
        # The text box's own select-all key is F7, which opens the Hub everywhere in the app.
        self.select_all_keys = set(keys_of("input.select_all", keymap).split(","))

    async def _on_key(self, event: events.Key) -> None:
        if event.key in self.send_keys:
            event.prevent_default()
            event.stop()
            self.post_message(self.Submitted(self.text.strip()))
            return
        if event.key in self.newline_keys:
            event.prevent_default()
            event.stop()
            self.insert("\n")
            return
        if event.key in self.select_all_keys:
            event.prevent_default()
            event.stop()
            self.select_all()
            return
        if event.key in self.select_keys and not self.text:
            event.prevent_default()
            event.stop()
            self.post_message(self.SelectLast())
            return
        await super()._on_key(event)
