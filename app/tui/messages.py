"""What workers tell the screens. Workers never touch widgets: they post these."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from pathlib import Path

    from app.engine.interface import ChatEngine
    from app.engine.stats import LoadReport
    from app.prompt.builder import FormatChoice
    from app.session.chat import ChatSession, MessageFit, Outcome, Preview, Turn
    from app.session.kv_keeper import Restored


class TurnStarted(Message):
    def __init__(self, serial: int, turn: Turn) -> None:
        super().__init__()
        self.serial = serial
        self.turn = turn


class Piece(Message):
    """Text of the reply being written (the engine already joins tokens at screen rate)."""

    def __init__(self, serial: int, text: str, kind: str = "answer") -> None:
        super().__init__()
        self.serial = serial
        self.text = text
        self.kind = kind  # "answer", or "reasoning": a thinking model's block, shown apart


class TurnDone(Message):
    """The turn ended. `unsaved`: the text of a reply the chat store would not take (it stays on screen)."""

    def __init__(self, serial: int, outcome: Outcome | None, error: str | None = None, unsaved: str = "") -> None:
        super().__init__()
        self.serial = serial
        self.outcome = outcome
        self.error = error
        self.unsaved = unsaved


class PreviewReady(Message):
    """The context the next reply would have; `error`: why it could not be counted."""

    def __init__(self, chat_id: int, preview: Preview | None, error: str = "") -> None:
        super().__init__()
        self.chat_id = chat_id
        self.preview = preview
        self.error = error


class DraftMeasured(Message):
    """The text in the chat box, counted against the room the context has for one message."""

    def __init__(self, chat_id: int, text: str, fit: MessageFit | None) -> None:
        super().__init__()
        self.chat_id = chat_id
        self.text = text
        self.fit = fit


class ChatsMoved(Message):
    """A chat import or export ended (Chats screen): what to say, and the chat imported, if any."""

    def __init__(self, line: str, *, error: bool = False, chat_id: int | None = None) -> None:
        super().__init__()
        self.line = line
        self.error = error
        self.chat_id = chat_id


class CardImported(Message):
    """A card import ended (Characters screen): the new entry's reference, or the error line."""

    def __init__(self, ref: str | None, line: str, *, error: bool = False) -> None:
        super().__init__()
        self.ref = ref
        self.line = line
        self.error = error


class ModelLoading(Message):
    """How far the model's load is (0 to 1)."""

    def __init__(self, path: Path, progress: float) -> None:
        super().__init__()
        self.path = path
        self.progress = progress


class ModelLoadFailed(Message):
    def __init__(self, path: Path, error: str) -> None:
        super().__init__()
        self.path = path
        self.error = error


class ModelLoaded(Message):
    """The model is loaded; `attached`: the chat the worker attached it to (another may be open by now)."""

    def __init__(self, path: Path, report: LoadReport, choice: FormatChoice, attached: ChatSession | None) -> None:
        super().__init__()
        self.path = path
        self.report = report
        self.choice = choice
        self.attached = attached


class EngineConnected(Message):
    """A named engine answered (app.session.engines): the app chats through it from now on."""

    def __init__(self, name: str, engine: ChatEngine, choice: FormatChoice) -> None:
        super().__init__()
        self.name = name
        self.engine = engine
        self.choice = choice


class EngineFailed(Message):
    """A named engine could not be used: the model or engine in use stays."""

    def __init__(self, name: str, error: str) -> None:
        super().__init__()
        self.name = name
        self.error = error


class ChatRestored(Message):
    """A chat's kept KV cache was put back (or not: `restored.note` says why) when it opened."""

    def __init__(self, chat_id: int, restored: Restored) -> None:
        super().__init__()
        self.chat_id = chat_id
        self.restored = restored


class Notice(Message):
    """One line for the person from a thread that is not the UI's (a big KV save's size)."""

    def __init__(self, text: str, severity: str = "information") -> None:
        super().__init__()
        self.text = text
        self.severity = severity


class PromptRebuilt(Message):
    """The open chat's recipe was rebuilt on a worker (a new system prompt): the next prompt is counted again."""
