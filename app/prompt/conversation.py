"""A conversation rendered through the model's chat template, with a simple sliding window.

The system message stays pinned; when the turns no longer fit beside the room kept
for the reply, the oldest exchange leaves the window. (Prompt formats and the
token-budgeted window with message-aligned context shift come with issue 3.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from app.engine.metadata import ModelInfo
from app.errors import ContextOverflowError
from app.prompt.chat_template import TemplateRenderError, fallback_template, render_chat_template


@dataclass
class Conversation:
    info: ModelInfo
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    window_start: int = 0  # index of the first message still in the window

    @property
    def template(self) -> str:
        return self.info.chat_template or fallback_template()

    @property
    def template_source(self) -> str:
        return "GGUF chat template" if self.info.chat_template else "ChatML (no template in the GGUF)"

    def add(self, role: str, content: str) -> None:
        self.messages.append({"role": role, "content": content})

    def reset(self) -> None:
        self.messages.clear()
        self.window_start = 0

    def render(self, start: int | None = None) -> str:
        turns = self.messages[self.window_start if start is None else start :]
        extra = {"bos_token": self.info.bos_token or "", "eos_token": self.info.eos_token or ""}
        if not self.system:
            return render_chat_template(self.template, turns, **extra)
        with_system = [{"role": "system", "content": self.system}, *turns]
        try:
            return render_chat_template(self.template, with_system, **extra)
        except TemplateRenderError:
            # Templates without a system role (Mistral, Gemma) refuse one: fold it
            # into the first user message, as their model cards advise.
            if not turns or turns[0]["role"] != "user":
                raise
            first = {"role": "user", "content": f"{self.system}\n\n{turns[0]['content']}"}
            return render_chat_template(self.template, [first, *turns[1:]], **extra)

    def fit(self, count_tokens: Callable[[str], int], n_ctx: int, reserve: int) -> str:
        """Render the prompt, sliding the window forward until it fits `n_ctx - reserve`."""
        start = self.window_start
        while True:
            text = self.render(start)
            if count_tokens(text) + reserve <= n_ctx:
                self.window_start = start
                return text
            # Drop the oldest exchange, but never the message being answered.
            if start >= len(self.messages) - 1:
                raise ContextOverflowError(
                    f"the last message and system prompt do not fit in the context ({n_ctx} tokens, "
                    f"{reserve} kept for the reply); shorten them or use a larger --ctx"
                )
            start += 2 if start + 2 < len(self.messages) else 1
