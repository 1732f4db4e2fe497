"""What workers tell the screens. Workers never touch widgets: they post these."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from app.session.chat import Outcome, Preview, Turn


class TurnStarted(Message):
    def __init__(self, serial: int, turn: Turn) -> None:
        super().__init__()
        self.serial = serial
        self.turn = turn


class Piece(Message):
    """Text of the reply being written (the engine already joins tokens at screen rate)."""

    def __init__(self, serial: int, text: str) -> None:
        super().__init__()
        self.serial = serial
        self.text = text


class TurnDone(Message):
    def __init__(self, serial: int, outcome: Outcome | None, error: str | None = None) -> None:
        super().__init__()
        self.serial = serial
        self.outcome = outcome
        self.error = error


class PreviewReady(Message):
    def __init__(self, chat_id: int, preview: Preview | None) -> None:
        super().__init__()
        self.chat_id = chat_id
        self.preview = preview
