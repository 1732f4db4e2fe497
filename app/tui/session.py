"""Everything a chat screen needs, assembled by the CLI: the app never loads files or models itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.chats.store import ChatStore
from app.engine.engine import Engine
from app.engine.options import SamplerSettings
from app.prompt.builder import PromptBuilder
from app.prompt.segments import Message
from app.prompt.window import WindowState


@dataclass
class ChatSession:
    engine: Engine
    builder: PromptBuilder
    sampler: SamplerSettings
    store: ChatStore
    chat_id: int
    title: str
    format_note: str
    history: list[Message] = field(default_factory=list)
    message_ids: list[int] = field(default_factory=list)
    window: WindowState = field(default_factory=WindowState)

    @property
    def reserve(self) -> int:
        return min(self.sampler.max_tokens, self.engine.n_ctx // 2)

    def load_history(self) -> None:
        self.history = [Message(m.role, m.text, m.name) for m in self.store.messages(self.chat_id)]
        self.message_ids = [m.id for m in self.store.messages(self.chat_id)]

    def append(self, role: str, text: str, state: str = "done", provenance: dict[str, Any] | None = None) -> None:
        self.history.append(Message(role, text))
        self.message_ids.append(self.store.add_message(self.chat_id, role, text, state=state, provenance=provenance))

    def add_swipe(self, text: str, state: str = "done", provenance: dict[str, Any] | None = None) -> None:
        """A regenerated reply: a new alternative of the last message, made the active one."""
        self.store.add_swipe(self.message_ids[-1], text, state=state, provenance=provenance)
        self.history[-1] = Message(self.history[-1].role, text)

    def swipe(self, step: int) -> tuple[int, int] | None:
        """Show the previous or next alternative of the last message; (index, count) or None."""
        if not self.message_ids:
            return None
        stored = self.store.messages(self.chat_id)[-1]
        target = stored.active + step
        if not 0 <= target < len(stored.swipes):
            return None
        self.store.select_swipe(stored.id, target)
        self.history[-1] = Message(stored.role, stored.swipes[target].text)
        return target, len(stored.swipes)
