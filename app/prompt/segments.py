"""Rendering a conversation as text segments: one for the pinned block, one per example
block, one per message, one for the generation prefix.

Each segment is later tokenized on its own, so the token span of every message is
known exactly and what is sent is the concatenation of the segments' tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from app.prompt.chat_template import Budget, TemplateRenderError, TemplateUnsafeError, render_chat_template
from app.prompt.formats import PromptFormat

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    name: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        role = str(data.get("role", ""))
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(data.get("content"), str):
            raise ValueError("content must be a string")
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise ValueError("name must be a string")
        return cls(role, data["content"], name or None)


@dataclass(frozen=True)
class Speakers:
    user: str = "User"
    char: str = "Assistant"


@dataclass
class Rendered:
    pinned: str
    examples: list[str]
    turns: list[str]  # one per message of the history given
    generation: str
    # False when a chat template does not render message by message (its output
    # for n messages is not a prefix of its output for n + 1); then every window
    # must be rendered whole.
    segmentable: bool = True
    notes: list[str] = field(default_factory=list)


def _message_text(fmt: PromptFormat, m: Message, speakers: Speakers) -> str:
    name = m.name or (speakers.user if m.role == "user" else speakers.char)
    content = f"{name}: {m.content}" if fmt.names and m.role != "system" else m.content
    if m.role == "user":
        return fmt.user_prefix + content + fmt.user_suffix
    if m.role == "assistant":
        return fmt.assistant_prefix + content + fmt.assistant_suffix
    if fmt.system_empty:  # no system role: a later system message is an instruction from the user
        return fmt.user_prefix + content + fmt.user_suffix
    return fmt.system_prefix + content + fmt.system_suffix


def render_format(
    fmt: PromptFormat,
    system: str | None,
    history: Sequence[Message],
    speakers: Speakers,
    examples: Sequence[Sequence[Message]] = (),
) -> Rendered:
    def fill(text: str) -> str:
        return fmt.fill(text, speakers.user, speakers.char)

    system_text = system if system else fmt.system_default
    pinned = fmt.system_prefix + system_text + fmt.system_suffix if system_text else fmt.system_empty
    return Rendered(
        pinned=fill(pinned),
        examples=[fill("".join(_message_text(fmt, m, speakers) for m in block)) for block in examples],
        turns=[fill(_message_text(fmt, m, speakers)) for m in history],
        generation=fill(fmt.generation),
    )


def _dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def render_template(
    template: str,
    system: str | None,
    history: Sequence[Message],
    *,
    bos_token: str,
    eos_token: str,
    examples: Sequence[Sequence[Message]] = (),
    model: str = "",
    budget: Budget | None = None,
) -> Rendered:
    """Segments from a GGUF chat template, found by rendering one message more at a time.

    The renders share one time `budget` (see `Budget`), and a template the sandbox
    stopped (`TemplateUnsafeError`) is not tried again with other messages.
    """
    budget = budget if budget is not None else Budget()

    def render(messages: list[dict[str, str]], gen: bool = False) -> str:
        return render_chat_template(
            template,
            messages,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=gen,
            model=model,
            budget=budget,
        )

    notes: list[str] = []
    head: list[dict[str, str]] = []
    try:
        pinned = render([])  # e.g. a template that always writes {{ bos_token }} first
    except TemplateUnsafeError:
        raise
    except TemplateRenderError:
        pinned = ""
    if system:
        head = [{"role": "system", "content": system}]
        try:
            pinned = render(head)
        except TemplateUnsafeError:
            raise
        except TemplateRenderError:
            # No system role in this template: fold the system text into the first user message.
            notes.append("the chat template has no system role; the system prompt opens the first user message")
            head = []
            history = _fold_system(system, history)
    flat_examples = [m for block in examples for m in block]
    messages = head + _dicts(flat_examples) + _dicts(history)
    texts = [render(messages[:i]) if i > len(head) else pinned for i in range(len(head), len(messages) + 1)]
    segmentable = all(b.startswith(a) for a, b in pairwise(texts))
    full = texts[-1]
    with_gen = render(messages, gen=True)
    generation = with_gen[len(full) :] if with_gen.startswith(full) else ""
    if not segmentable:
        return Rendered(pinned="", examples=[], turns=[full], generation=generation, segmentable=False, notes=notes)
    pieces = [b[len(a) :] for a, b in pairwise(texts)]
    n_ex = len(flat_examples)
    example_text = "".join(pieces[:n_ex])
    return Rendered(
        pinned=pinned,
        examples=[example_text] if example_text else [],
        turns=pieces[n_ex:],
        generation=generation,
        notes=notes,
    )


def _fold_system(system: str, history: Sequence[Message]) -> list[Message]:
    out = list(history)
    for i, m in enumerate(out):
        if m.role == "user":
            out[i] = Message("user", f"{system}\n\n{m.content}", m.name)
            return out
    return [Message("user", system), *out]
