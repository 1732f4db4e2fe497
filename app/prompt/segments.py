"""Rendering a conversation as text segments: one for the pinned block, one per example
block, one per message, one for what goes right before the reply (post-history
instructions), one for the generation prefix.

Each segment is later tokenized on its own, so the token span of every message is
known exactly and what is sent is the concatenation of the segments' tokens. A chat
template's segments are cut from its text for the whole conversation, never rendered
apart, so that cutting never changes the text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
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
    generation: str  # the reply's opening (with an `opening` message: that message as rendered)
    # False when a chat template does not render message by message (its output
    # for n messages is not a prefix of its output for n + 1); then every window
    # must be rendered whole: `turns` is one text, and `post` is inside it.
    segmentable: bool = True
    notes: list[str] = field(default_factory=list)
    post: str = ""  # the post-history texts (and lore placed at the end) as messages, before the reply


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
    post: Sequence[str] = (),
    opening: Message | None = None,
) -> Rendered:
    """`post` texts are system messages of the format right before the reply; `opening`, a
    message rendered in place of the generation prefix (continuing or impersonating)."""

    def fill(text: str) -> str:
        return fmt.fill(text, speakers.user, speakers.char)

    system_text = system if system else fmt.system_default
    pinned = fmt.system_prefix + system_text + fmt.system_suffix if system_text else fmt.system_empty
    return Rendered(
        pinned=fill(pinned),
        examples=[fill("".join(_message_text(fmt, m, speakers) for m in block)) for block in examples],
        turns=[fill(_message_text(fmt, m, speakers)) for m in history],
        generation=fill(_message_text(fmt, opening, speakers) if opening is not None else fmt.generation),
        post="".join(fill(_message_text(fmt, Message("system", text), speakers)) for text in post if text),
    )


def _dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


# Stand-ins for the BOS and EOS texts while a template's segments are found: characters of
# Unicode's private use area, which no template writes and no marker starts with. A template
# that writes the EOS text only after the last message (Phi-3.5 without a generation prompt)
# then shows it as a trailer of its own, not as the start of the next message (`</s>` and
# `<|user|>` share their `<`; the stand-in shares nothing).
_BOS = "\U000f0001"
_EOS = "\U000f0002"
# Text that reads as one special token (`<|im_start|>`, `<start_of_turn>`, `[INST]`,
# `<｜User｜>`): a segment never ends inside one, or each half would be tokenized as text.
_MARKER = re.compile(r"<\|[^<>|\s]{1,80}\|>|<[^<>\s]{1,80}>|\[/?[A-Z][A-Z_]{1,40}\]")
MAX_TRAILER = 512  # characters a template may write after the last message when not generating


def render_template(
    template: str,
    system: str | None,
    history: Sequence[Message],
    *,
    bos_token: str,
    eos_token: str,
    examples: Sequence[Sequence[Message]] = (),
    post: Sequence[str] = (),
    opening: Message | None = None,
    model: str = "",
    budget: Budget | None = None,
    variables: Mapping[str, Any] | None = None,
) -> Rendered:
    """A GGUF chat template's text for the whole conversation, cut into segments.

    The text is always the template's own for the whole conversation with a generation
    prompt (or, with `opening`, ending in that message, as Hugging Face's
    `continue_final_message` renders it). The segments are found by rendering one message
    more at a time without a generation prompt; what a template writes only after the
    last message (an EOS text) is found as the trailer those renders share and taken off.
    When the renders are not such a chain (the template writes a message differently once
    others follow it, or depends on how many there are), the conversation is one segment
    (`segmentable=False`) and every window is rendered whole.

    `post` texts go in as system messages right before the reply; a template that refuses
    them there, leaves them out or writes them elsewhere gets them at the end of the last user
    message instead, so that they stay next to the reply.
    A template without a system role gets the system prompt at the start of the first
    user message. The renders share one time `budget` (see `Budget`), and a template the
    sandbox stopped (`TemplateUnsafeError`) is not tried again with other messages.
    `variables` go to the template beside the messages (Qwen3's `enable_thinking`).
    """
    budget = budget if budget is not None else Budget()
    variables = dict(variables or {})
    generate = opening is None
    # An empty text needs no stand-in (and a template may test it: `{% if bos_token %}`).
    stand_in = {_BOS: bos_token, _EOS: eos_token}
    stand_in = {mark: text for mark, text in stand_in.items() if text}

    def render(messages: Sequence[Message], gen: bool, real: bool = True) -> str:
        return render_chat_template(
            template,
            _dicts(messages),
            bos_token=bos_token if real or not bos_token else _BOS,
            eos_token=eos_token if real or not eos_token else _EOS,
            add_generation_prompt=gen,
            model=model,
            budget=budget,
            **variables,
        )

    def attempt(messages: Sequence[Message]) -> str | None:
        """The whole text for `messages`, or None when the template refuses them."""
        try:
            return render([*messages, *tail], generate)
        except TemplateUnsafeError:
            raise
        except TemplateRenderError:
            return None

    notes: list[str] = []
    tail = [opening] if opening is not None else []
    flat_examples = [m for block in examples for m in block]
    head = [Message("system", system)] if system else []
    body = list(history)
    if head and attempt([*head, *flat_examples, *body]) is None:
        # No system role: the system prompt opens the first user message, or, with none in the
        # window (a greeting alone), is a user message of its own, pinned like a system message.
        if any(m.role == "user" for m in body):
            instead, folded = [], _fold_system(system or "", body)
        else:
            instead, folded = [Message("user", system or "")], body
        if attempt([*instead, *flat_examples, *folded]) is not None:
            notes.append("the chat template has no system role; the system prompt opens the first user message")
            head, body = instead, folded
    posts = [Message("system", text) for text in post if text]
    if posts and not _near_the_reply(attempt([*head, *flat_examples, *body, *posts]), body, posts):
        body, posts = _fold_post([p.content for p in posts], body)
        where = "are a user message before the reply" if posts else "close the last user message"
        notes.append(
            "the chat template writes no system message right before the reply: the post-history "
            f"instructions (and lore placed at the end) {where}"
        )
    messages = [*head, *flat_examples, *body, *posts]
    truth = render([*messages, *tail], generate)  # raises the template's own error, if any

    # The same renders with stand-ins for BOS and EOS, to find the segments.
    whole = render([*messages, *tail], generate, real=False)
    first = len(head)
    prefixes: list[str | None] = []
    for i in range(first, len(messages) + 1):
        try:
            prefixes.append(render(messages[:i], False, real=False))
        except TemplateUnsafeError:
            raise
        except TemplateRenderError:
            if i > 0:  # a template that cannot end a conversation at this message
                break
            prefixes.append(None)  # no messages at all: nothing is pinned
    cuts = _cuts(prefixes, whole) if len(prefixes) == len(messages) + 1 - first else None
    pieces = _pieces(whole, cuts, truth, stand_in) if cuts is not None else None
    if pieces is None:
        # Whole renderings only; the generation prompt still apart, where it can be found.
        last = _last_cut(prefixes[-1] if len(prefixes) == len(messages) + 1 - first else None, whole)
        split = _pieces(whole, [last], truth, stand_in) if last is not None else None
        text, generation = (split[0], split[1]) if split is not None else (truth, "")
        return Rendered("", [], [text], generation, segmentable=False, notes=notes)
    n_examples, n_posts = len(flat_examples), len(posts)
    turns = pieces[1:-1]
    example_text = "".join(turns[:n_examples])
    return Rendered(
        pinned=pieces[0],
        examples=[example_text] if example_text else [],
        turns=turns[n_examples : len(turns) - n_posts],
        generation=pieces[-1],
        post="".join(turns[len(turns) - n_posts :]),
        notes=notes,
    )


def _cuts(prefixes: Sequence[str | None], whole: str) -> list[int] | None:
    """Where each prefix rendering's messages end in `whole`, or None when they are no chain.

    Each prefix is the conversation up to a message, rendered without a generation
    prompt: its messages, then a trailer the template writes only at the very end (most
    write nothing). The trailer is the shortest end of the last prefix that, taken off
    every prefix ending with it, leaves texts each beginning the next, and `whole`.
    """
    last = prefixes[-1]
    if last is None:  # no messages, and a template that renders nothing for none
        return [0]
    chain = [p for p in prefixes if p is not None]
    shortest = 0
    for a, b in pairwise([*chain, whole]):
        # Text at the end of `a` that `b` lacks there can only be (part of) the trailer: a
        # trailer at least that long, which `a` must end with. Where `a` cannot, no trailer
        # makes a chain (a message written differently once others follow): found at once,
        # without trying every length.
        extra = len(a) - _common_prefix(a, b)
        if extra > MAX_TRAILER or (extra and not a.endswith(last[len(last) - extra :])):
            return None
        shortest = max(shortest, extra)
    for k in range(shortest, min(len(last), shortest + MAX_TRAILER) + 1):
        trailer = last[len(last) - k :]
        bodies = ["" if p is None else p[: len(p) - k] if k and p.endswith(trailer) else p for p in prefixes]
        if all(b.startswith(a) for a, b in pairwise([*bodies, whole])):
            return _snap([len(b) for b in bodies], whole)
    return None


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]: halve (comparisons run in C)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _last_cut(last: str | None, whole: str) -> int | None:
    """Where the messages end in `whole` by the last prefix alone (for a generation prompt apart)."""
    if last is None:
        return None
    return _snap([_common_prefix(last, whole)], whole)[0]


def _snap(cuts: list[int], whole: str) -> list[int]:
    """Each cut moved back to the start of a marker it would split. A trailer may share the
    start of the next message's marker (Command-R writes its own turn's opening even without
    a generation prompt: `<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>` after every prefix, where
    the next message has `<|START_OF_TURN_TOKEN|><|USER_TOKEN|>`)."""
    spans = [(m.start(), m.end()) for m in _MARKER.finditer(whole)]
    out = []
    for cut in cuts:
        for begin, end in spans:
            if begin < cut < end:
                cut = begin
                break
        out.append(cut)
    return out


def _pieces(whole: str, cuts: Sequence[int], truth: str, stand_in: dict[str, str]) -> list[str] | None:
    """`whole` cut at `cuts`, with the real BOS and EOS texts for their stand-ins; None unless
    the pieces make `truth` again (a template that treats those texts as more than text)."""
    bounds = [0, *cuts, len(whole)]
    if any(b < a for a, b in pairwise(bounds)):
        return None
    pieces = [whole[a:b] for a, b in pairwise(bounds)]
    for mark, text in stand_in.items():
        pieces = [p.replace(mark, text) for p in pieces]
    return pieces if "".join(pieces) == truth else None


def _near_the_reply(whole: str | None, body: Sequence[Message], posts: Sequence[Message]) -> bool:
    """Whether a template wrote the post texts after the last message: not refused (None), left
    out, or moved away (DeepSeek's templates gather every system message into the first)."""
    if whole is None:
        return False
    after = 0
    if body and body[-1].content:
        found = whole.rfind(body[-1].content)
        after = found + len(body[-1].content) if found >= 0 else 0
    return all(whole.find(p.content, after) >= 0 for p in posts)


def _fold_post(texts: Sequence[str], history: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """(history, messages for right before the reply) for a template that takes no system message
    there: the texts close the last user message, or, with none in the window (a greeting alone),
    are a user message of their own before the reply."""
    out = list(history)
    joined = "\n\n".join(texts)
    for i in range(len(out) - 1, -1, -1):
        if out[i].role == "user":
            out[i] = Message("user", f"{out[i].content}\n\n{joined}", out[i].name)
            return out, []
    return out, [Message("user", joined)]


def _fold_system(system: str, history: Sequence[Message]) -> list[Message]:
    """`history` with `system` opening its first user message (there is one)."""
    out = list(history)
    i = next(i for i, m in enumerate(out) if m.role == "user")
    out[i] = Message("user", f"{system}\n\n{out[i].content}", out[i].name)
    return out
