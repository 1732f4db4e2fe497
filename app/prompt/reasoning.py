"""Thinking models: a reply's reasoning block (`<think>…</think>`) told apart from its answer.

DeepSeek-R1 distills, Qwen3 and SmolLM3 write their chain of thought in a block before the answer.
Shown as part of the reply it buries the answer; sent back in every later prompt it wastes the
context and confuses the model. So the block is parsed out of the stream as it arrives, shown apart,
stored apart, and left out of later prompts unless the chat asks to keep it.

The markers are data: a format file's `reasoning_start`/`reasoning_end` (and `reasoning_opened` when
the format's generation prompt opens the block itself, as DeepSeek-R1's does after `<｜Assistant｜>`),
or, for a GGUF chat template, found in the template's text. Only a block at the very start of a reply
is reasoning (leading whitespace aside), as SillyTavern parses it: the same words later in an answer
are the answer's.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_START, THINK_END = "<think>", "</think>"
# What opens a reply that skips thinking, for templates trained with an empty block (Qwen3's
# `enable_thinking=False` renders exactly this).
EMPTY_THINK = "<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class ReasoningMarkers:
    start: str
    end: str
    opened: bool = False  # the prompt's generation opening already holds `start`: the reply begins inside
    skip: str = ""  # written after the generation prompt to skip thinking ("" when this model has no such switch)
    origin: str = "format"  # "format" (a format file) or "template" (found in a GGUF chat template)
    # The template's own variable that turns thinking off when false (Qwen3's and SmolLM3's
    # `enable_thinking`): set, thinking off renders the template with it instead of writing `skip`.
    switch: str = ""


def template_markers(template: str | None) -> ReasoningMarkers | None:
    """The markers a chat template writes, if it is a thinking model's: it must name both."""
    if not template or THINK_START not in template or THINK_END not in template:
        return None
    return ReasoningMarkers(THINK_START, THINK_END, skip=EMPTY_THINK, origin="template")


LEAD, THINK, ANSWER = "lead", "think", "answer"


class ReasoningSplitter:
    """Splits a reply's text into reasoning and answer as pieces arrive; a marker may be cut between
    pieces anywhere, so what could still become one is held back until the next piece says.

    `inside`: the reply starts inside the block (the prompt opened it, or a continue of a reply cut
    while thinking)."""

    def __init__(self, markers: ReasoningMarkers, *, inside: bool = False) -> None:
        self.markers = markers
        self.state = THINK if inside or markers.opened else LEAD
        self.reasoning = ""
        self.answer = ""
        self.closed = False  # the block's end was seen
        self._held = ""
        self._trim = False  # whitespace right after the block's end is not the answer's

    def feed(self, piece: str) -> list[tuple[str, str]]:
        """The new text as ("reasoning" | "answer", text) parts, in order."""
        out: list[tuple[str, str]] = []
        text = self._held + piece
        self._held = ""
        while text:
            if self.state == LEAD:
                stripped = text.lstrip()
                if not stripped:
                    self._held = text  # only whitespace yet: it may come before the block
                    return out
                if stripped.startswith(self.markers.start):
                    self.state = THINK
                    text = stripped[len(self.markers.start) :]
                    continue
                if self.markers.start.startswith(stripped):
                    self._held = text  # may still become the opening marker
                    return out
                self.state = ANSWER
                continue
            if self.state == THINK:
                end = text.find(self.markers.end)
                if end >= 0:
                    self._add(out, "reasoning", text[:end])
                    self.state, self.closed, self._trim = ANSWER, True, True
                    text = text[end + len(self.markers.end) :]
                    continue
                keep = _partial_suffix(text, self.markers.end)
                self._add(out, "reasoning", text[: len(text) - keep])
                self._held = text[len(text) - keep :]
                return out
            if self._trim:
                text = text.lstrip()
                if not text:
                    return out
                self._trim = False
            self._add(out, "answer", text)
            return out
        return out

    def end(self) -> list[tuple[str, str]]:
        """What was held back, once the reply has ended: a marker never finished is plain text."""
        held, self._held = self._held, ""
        out: list[tuple[str, str]] = []
        if not held:
            return out
        if self.state == THINK:
            self._add(out, "reasoning", held)
        elif self.state == LEAD:
            if held.strip():
                self.state = ANSWER
                self._add(out, "answer", held)
        elif not self._trim:
            self._add(out, "answer", held)
        return out

    @property
    def thinking(self) -> bool:
        """Inside the block now (the reply so far is reasoning)."""
        return self.state == THINK

    def _add(self, out: list[tuple[str, str]], kind: str, text: str) -> None:
        if not text:
            return
        if kind == "reasoning":
            self.reasoning += text
        else:
            self.answer += text
        out.append((kind, text))


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a start of `marker` (a marker cut in two)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


@dataclass(frozen=True)
class SplitReply:
    raw_reasoning: str  # as written, spaces and all (a continued block goes on from its very end)
    answer: str
    closed: bool  # the block ended (False: the reply stopped while thinking, or had no block)

    @property
    def reasoning(self) -> str:
        return self.raw_reasoning.strip()

    @property
    def open(self) -> bool:
        """Stopped inside the block: a continue goes on thinking."""
        return bool(self.reasoning) and not self.closed


def split_reply(text: str, markers: ReasoningMarkers | None, *, inside: bool = False) -> SplitReply:
    """A whole reply split at once (what a finished turn stores)."""
    if markers is None:
        return SplitReply("", text, False)
    s = ReasoningSplitter(markers, inside=inside)
    s.feed(text)
    s.end()
    return SplitReply(s.reasoning, s.answer, s.closed)


def with_reasoning(markers: ReasoningMarkers, reasoning: str, answer: str) -> str:
    """A reply as the model wrote it, for a chat that keeps reasoning in later prompts."""
    if not reasoning:
        return answer
    return f"{markers.start}\n{reasoning}\n{markers.end}\n\n{answer}"
