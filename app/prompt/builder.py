"""Building the exact prompt for a turn: format → segments → tokens → window.

The result says everything a user may want to check: the text and tokens sent, the
size of the pinned block, the budget, and which messages were kept or dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.engine.metadata import ModelInfo
from app.errors import CatteryError
from app.prompt.chat_template import Budget
from app.prompt.formats import FALLBACK, GGUF, PromptFormat, get_format, guess_format
from app.prompt.inject import Dynamic, Placed, Slot, fold, place, splice
from app.prompt.reasoning import ReasoningMarkers
from app.prompt.segments import Message, Rendered, Speakers, render_format, render_template
from app.prompt.tokens import SegmentTokenizer
from app.prompt.window import SLACK, WindowState, fit_window


@dataclass
class FormatChoice:
    name: str
    why: str  # "chosen", "GGUF chat template", "guessed from the name", "fallback"
    warning: str | None = None


def choose_format(explicit: str | None, info: ModelInfo | None) -> FormatChoice:
    """An explicit choice wins; then the GGUF template; then a guess from the name; then ChatML."""
    if explicit:
        if explicit == GGUF:
            if info is None or not info.chat_template:
                raise CatteryError("--format gguf needs a model whose GGUF file carries a chat template")
        else:
            get_format(explicit)
        return FormatChoice(explicit, "chosen")
    if info is None:
        return FormatChoice(FALLBACK, "fallback", "no model and no --format: using chatml")
    if info.chat_template:
        return FormatChoice(GGUF, "GGUF chat template")
    guessed = guess_format([info.name or "", info.path.stem])
    if guessed:
        return FormatChoice(guessed, "guessed from the name")
    return FormatChoice(
        FALLBACK,
        "fallback",
        f"{info.path.name} has no chat template and its name suggests no format; using chatml "
        "(choose one with --format; `cattery formats` lists them)",
    )


_UNKNOWN = object()  # not looked for yet

# Marks where a message's text would go, so the text before it is the turn's opening.
# A private-use character: no card, chat or template contains it.
_OPEN = "\ue000cattery-open\ue000"


@dataclass(frozen=True)
class Opening:
    """How the generated text starts: whose turn it is and what is written already.

    A normal reply is the character's turn with nothing written. Continuing a reply
    gives its text as `prefix`; impersonation is the user's turn. The opening is the
    turn exactly as the format renders that message, cut where the new text begins,
    so a continued reply tokenizes as the whole message would.

    `after`: text written after a normal reply's generation prompt, before the model's first token
    (a thinking model's empty reasoning block, to answer at once).
    """

    role: str = "assistant"
    prefix: str = ""
    after: str = ""


@dataclass(frozen=True)
class _Call:
    """What one build renders besides the history, handed down to each render of that build
    (never kept on the builder, so that nothing from one build leaks into the next)."""

    system: str | None
    late: str = ""  # text right before the reply (lore placed at the end)
    placed: tuple[Placed, ...] = ()  # messages inserted at a depth (the Author's Note, lore)
    budget: Budget = field(default_factory=Budget)  # time shared by a chat template's renders


@dataclass
class Segment:
    kind: str  # bos, pinned, example, turn, note (an Author's or Character's Note), lore (at a depth), post, generation
    text: str
    index: int | None = None
    tokens: list[int] = field(default_factory=list)


@dataclass
class Insertion:
    """A message inserted for this prompt only (see app/prompt/inject.py), and where it went."""

    kinds: tuple[str, ...]  # author_note, character_note (a card's), lore
    depth: int
    role: str
    text: str
    before: int | None  # the stored message it went before; None: after the last one, right before the reply
    segment: int | None  # its segment in `BuiltPrompt.segments` (None: rendered whole, or folded)
    folded_into: int | None = None  # a template that refused it: the message whose text it joined


@dataclass
class BuiltPrompt:
    format: str
    text: str
    stop: list[str]
    segments: list[Segment]
    kept: list[int]
    dropped: list[int]
    examples_kept: bool
    tokens: list[int] | None = None
    pinned_tokens: int | None = None
    budget: int | None = None
    n_ctx: int | None = None
    reserve: int | None = None
    evicted_now: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    insertions: list[Insertion] = field(default_factory=list)
    # False: a chat template that does not render message by message; the window is one segment.
    segmentable: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "text": self.text,
            "tokens": len(self.tokens) if self.tokens is not None else None,
            "token_ids": self.tokens,
            "pinned_tokens": self.pinned_tokens,
            "budget": self.budget,
            "n_ctx": self.n_ctx,
            "reserve": self.reserve,
            "kept": self.kept,
            "dropped": self.dropped,
            "examples_kept": self.examples_kept,
            "stop": self.stop,
            "segments": [
                {
                    "kind": s.kind,
                    "index": s.index,
                    "text": s.text,
                    "tokens": len(s.tokens) if self.tokens is not None else None,
                }
                for s in self.segments
            ],
            "insertions": [
                {
                    "kinds": list(i.kinds),
                    "depth": i.depth,
                    "role": i.role,
                    "text": i.text,
                    "before_message": i.before,
                    "segment": i.segment,
                    "folded_into": i.folded_into,
                }
                for i in self.insertions
            ],
            "notes": self.notes,
            "segmentable": self.segmentable,
        }


class PromptExtras(Protocol):
    """The part of a chat's prompt that follows the conversation: lorebook entries the recent
    messages switch on, the Author's Note when it is due (app/session/lore.py: `ChatExtras`).

    The builder calls it once per build with the whole history the prompt is built from (oldest
    first, before the window drops any; no system prompt, examples or insertions), and it returns
    either `(pinned system text or None, text for right before the reply)` or a `Dynamic`,
    which also carries messages to insert at a depth and whether the builder's own system
    prompt stays. It may remember what it switched on (the line chat's `/lore` asks), but it
    must not change `history`.
    """

    def __call__(self, history: Sequence[Message], /) -> tuple[str | None, str] | Dynamic: ...


class PromptBuilder:
    def __init__(
        self,
        format_name: str,
        *,
        info: ModelInfo | None = None,
        tokenizer: SegmentTokenizer | None = None,
        system: str | None = None,
        speakers: Speakers | None = None,
        examples: Sequence[Sequence[Message]] = (),
        pin_examples: bool = False,
        slack: float = SLACK,
        post_history: str | None = None,
        dynamic: PromptExtras | None = None,
    ) -> None:
        self.format_name = format_name
        self.fmt: PromptFormat | None = None if format_name == GGUF else get_format(format_name)
        if self.fmt is None and (info is None or not info.chat_template):
            raise CatteryError("the gguf format needs a model with a chat template")
        self.info = info
        self.tokenizer = tokenizer
        self.system = system
        self.speakers = speakers or Speakers()
        self.examples = [list(b) for b in examples]
        self.pin_examples = pin_examples
        self.slack = slack
        self.post_history = post_history  # a card's post-history instructions: after the turns, before the reply
        # How lorebook entries and notes reach the prompt without the prompt package knowing cards.
        self.dynamic = dynamic
        self._reasoning: object = _UNKNOWN
        # Variables a chat template gets beside the messages, set by the chat that owns this builder
        # (Qwen3's `enable_thinking`); a format file has none.
        self.variables: dict[str, Any] = {}

    @property
    def reasoning(self) -> ReasoningMarkers | None:
        """A thinking model's reasoning markers: the format's, or those a GGUF chat template writes (and
        whether its generation prompt opens the block itself, as DeepSeek-R1's does)."""
        if self._reasoning is _UNKNOWN:
            self._reasoning = self._find_reasoning()
        return self._reasoning  # type: ignore[return-value]

    def _find_reasoning(self) -> ReasoningMarkers | None:
        from dataclasses import replace

        from app.prompt.chat_template import TemplateRenderError, TemplateUnsafeError
        from app.prompt.reasoning import template_markers

        if self.fmt is not None:
            return self.fmt.reasoning
        markers = template_markers(self.info.chat_template if self.info is not None else None)
        if markers is None:
            return None
        try:
            opening = self._render([Message("user", "x")], _Call(None)).generation
        except (TemplateRenderError, TemplateUnsafeError, CatteryError):
            return markers
        if opening.rstrip().endswith(markers.start):  # the prompt opens the block: skipping closes it
            markers = replace(markers, opened=True, skip="\n" + markers.end + "\n\n")
        if "enable_thinking" in self.info.chat_template:  # its own switch (Qwen3, SmolLM3): used as it is
            markers = replace(markers, switch="enable_thinking")
        return replace(markers, skip=self._template_skip(markers.skip))

    def _template_skip(self, default: str) -> str:
        """What the template itself writes after the generation prompt with `enable_thinking=False`
        (Qwen3, SmolLM3), where it has that switch: the exact text the model was trained to skip with."""
        from app.prompt.chat_template import TemplateRenderError, TemplateUnsafeError, render_chat_template

        assert self.info is not None and self.info.chat_template
        template = self.info.chat_template
        if "enable_thinking" not in template:
            return default
        messages = [{"role": "user", "content": "x"}]
        special = {"bos_token": self.info.bos_token or "", "eos_token": self.info.eos_token or ""}
        try:
            on = render_chat_template(template, messages, **special)
            off = render_chat_template(template, messages, enable_thinking=False, **special)
        except (TemplateRenderError, TemplateUnsafeError):
            return default
        return off[len(on) :] if off.startswith(on) and len(off) > len(on) else default

    @property
    def stop(self) -> list[str]:
        return self.fmt.stop_strings(self.speakers.user, self.speakers.char) if self.fmt else []

    def render(self, history: Sequence[Message]) -> Rendered:
        """`history` as this builder renders it, with its own system prompt and nothing dynamic."""
        return self._render(history, _Call(self.system))

    def _render(
        self,
        history: Sequence[Message],
        call: _Call,
        *,
        examples: bool = True,
        opening: Message | None = None,
    ) -> Rendered:
        """The window as the format renders it, with lore placed at the end and then the card's
        post-history instructions (nearest the reply) as system messages before the reply.

        A chat template renders all of it as one conversation, so that its text is exactly
        the template's own; `opening` is a message to end in instead of the generation prompt.
        """
        post = [text for text in (call.late, self.post_history) if text]
        shown = self.examples if examples else []
        if self.fmt is not None:
            return render_format(self.fmt, call.system, history, self.speakers, shown, post, opening)
        assert self.info is not None and self.info.chat_template
        return render_template(
            self.info.chat_template,
            call.system,
            history,
            bos_token=self.info.bos_token or "",
            eos_token=self.info.eos_token or "",
            examples=shown,
            post=post,
            opening=opening,
            model=self.info.path.name,
            budget=call.budget,
            variables=self.variables,
        )

    def _wants_bos(self, first_text: str) -> bool:
        tok = self.tokenizer
        if tok is None or not tok.add_bos or tok.bos_token < 0:
            return False
        if self.fmt is not None and self.fmt.bos == "never":
            return False
        bos_text = self.info.bos_token if self.info else None
        return not (bos_text and first_text.startswith(bos_text))  # the text carries it already

    def build(
        self,
        history: Sequence[Message],
        *,
        n_ctx: int | None = None,
        reserve: int = 0,
        state: WindowState | None = None,
        opening: Opening | None = None,
    ) -> BuiltPrompt:
        state = state if state is not None else WindowState()
        history = list(history)
        call = self._call(history)

        def render(start: int) -> tuple[Rendered, list[Slot]]:
            examples = self.pin_examples or not state.examples_dropped
            return self._render_window(history, start, call, examples, opening)

        if self.tokenizer is None or n_ctx is None:
            rendered, slots = render(0)
            return self._assemble(rendered, slots, history, 0, True, None, n_ctx, reserve, [])
        budget = n_ctx - reserve
        roles = [m.role for m in history]
        first_start = min(state.start, len(history))
        for _ in range(len(history) + 1):
            start = min(state.start, len(history))
            rendered, slots = render(start)
            if not rendered.segmentable:
                # Whole renderings only: slide one message at a time until it fits.
                n = self.tokenizer.count(rendered.turns[0] + rendered.post + rendered.generation) + 1
                if n <= budget or start >= len(history) - 1:
                    if n > budget:
                        fit_window(n, 0, [], 0, budget, WindowState(), [])  # raises with the numbers
                    evicted = list(range(first_start, start))
                    return self._assemble(rendered, slots, history, start, False, budget, n_ctx, reserve, evicted)
                state.start = start + 1
                continue
            first_text = (
                rendered.pinned
                or (rendered.examples[0] if rendered.examples else "")
                or (rendered.turns[0] if rendered.turns else "")
            )
            bos = 1 if self._wants_bos(first_text) else 0
            count = self.tokenizer.count
            counts = [count(t) for t in rendered.turns]
            # Inserted messages are part of the tail, like the reply's opening: never evicted.
            inserted = sum(n for n, slot in zip(counts, slots, strict=True) if slot.index is None)
            fit = fit_window(
                pinned=bos + count(rendered.pinned),
                examples=sum(count(e) for e in rendered.examples),
                turns=[n for n, slot in zip(counts, slots, strict=True) if slot.index is not None],
                generation=count(rendered.generation) + count(rendered.post) + inserted,
                budget=budget,
                state=WindowState(0, state.examples_dropped),
                roles=roles[start:],
                pin_examples=self.pin_examples,
                slack=self.slack,
            )
            state.examples_dropped = state.examples_dropped or (bool(rendered.examples) and not fit.examples_kept)
            if fit.start == 0:
                if rendered.examples and not fit.examples_kept:
                    # Rendered again without them: a template's text without the examples is its
                    # own text for that conversation, not this one with a piece taken out.
                    rendered, slots = render(start)
                evicted = list(range(first_start, start))
                return self._assemble(
                    rendered, slots, history, start, fit.examples_kept, budget, n_ctx, reserve, evicted
                )
            # The window moved: render again from the new start (a template may render
            # its first message differently) and check once more.
            state.start = start + fit.start
        raise CatteryError("the conversation cannot be fitted into the context")  # pragma: no cover

    def _call(self, history: list[Message]) -> _Call:
        """This build's own texts: the dynamic part's (lore, notes) for `history`, and a fresh time budget."""
        if self.dynamic is None:
            return _Call(self.system)
        parts = self.dynamic(history)
        if isinstance(parts, tuple):
            parts = Dynamic(*parts)
        system = self.system if parts.keep_system else parts.system
        return _Call(system, parts.late, tuple(place(parts.injections, len(history))))

    def _render_window(
        self, history: list[Message], start: int, call: _Call, examples: bool, opening: Opening | None
    ) -> tuple[Rendered, list[Slot]]:
        """The window from `start` with this build's inserted messages in it, ending in `opening`.

        A chat template may refuse a message where an insertion puts it (roles that must
        alternate): then each insertion is written into the nearest user message instead.
        """
        from app.prompt.chat_template import TemplateRenderError, TemplateUnsafeError

        opened = self._opening_message(opening)
        messages, slots = splice(history, start, call.placed)
        after = opening.after if opening is not None else ""
        if not any(s.placed is not None for s in slots):
            rendered = self._render(messages, call, examples=examples, opening=opened)
            return self._cut_opening(rendered, opened, after), slots
        try:
            rendered = self._render(messages, call, examples=examples, opening=opened)
            return self._cut_opening(rendered, opened, after), slots
        except TemplateUnsafeError:
            raise
        except TemplateRenderError:
            if self.fmt is not None:
                raise
        messages, slots, left = fold(messages, slots)
        rendered = self._cut_opening(self._render(messages, call, examples=examples, opening=opened), opened, after)
        rendered.notes.append(
            "the chat template refuses a message of its own there: the Author's Note (or lore) joins a user message"
        )
        if left:
            rendered.notes.append("an insertion was left out: no user message to put it in")
        return rendered, slots

    def _opening_message(self, opening: Opening | None) -> Message | None:
        """The message the prompt ends in instead of the generation prefix, with a marker where
        the new text begins; None for a normal reply."""
        if opening is None or (opening.role == "assistant" and not opening.prefix):
            return None
        name = self.speakers.user if opening.role == "user" else self.speakers.char
        return Message(opening.role, opening.prefix + _OPEN, name)

    def _cut_opening(self, rendered: Rendered, opened: Message | None, after: str = "") -> Rendered:
        """The opening message's turn as the format renders it, cut where the new text begins."""
        if opened is None:
            rendered.generation += after
            return rendered
        cut = rendered.generation.find(_OPEN)
        if cut >= 0:
            rendered.generation = rendered.generation[:cut]
            return rendered
        if not rendered.segmentable:  # one whole rendering: everything up to the marker is the prompt
            whole = rendered.turns[0] + rendered.generation
            cut = whole.find(_OPEN)
            if cut >= 0:
                rendered.turns, rendered.generation = [whole[:cut]], ""
                return rendered
        raise CatteryError(f"the {self.format_name} format does not render a {opened.role} turn that can be opened")

    def _assemble(
        self,
        r: Rendered,
        slots: list[Slot],
        history: list[Message],
        start: int,
        examples_kept: bool,
        budget: int | None,
        n_ctx: int | None,
        reserve: int,
        evicted: list[int],
    ) -> BuiltPrompt:
        segments: list[Segment] = []
        insertions: list[Insertion] = []
        if r.pinned:
            segments.append(Segment("pinned", r.pinned))
        if examples_kept:
            segments += [Segment("example", text, i) for i, text in enumerate(r.examples) if text]
        for k, slot in enumerate(slots):
            where = len(segments) if r.segmentable else None
            if slot.placed is not None:
                insertions.append(_insertion(slot.placed, start, len(history), where))
                if r.segmentable:
                    kind = "lore" if set(slot.placed.kinds) == {"lore"} else "note"
                    segments.append(Segment(kind, r.turns[k]))
                continue
            insertions += [_insertion(p, start, len(history), None, slot.index) for p in slot.folded]
            if r.segmentable:
                segments.append(Segment("turn", r.turns[k], slot.index))
        if not r.segmentable:
            segments.append(Segment("turn", r.turns[0], None))
        if r.post:
            segments.append(Segment("post", r.post))
        segments.append(Segment("generation", r.generation))
        text = "".join(s.text for s in segments)
        built = BuiltPrompt(
            format=self.format_name,
            text=text,
            stop=self.stop,
            segments=segments,
            kept=list(range(start, len(history))),
            dropped=list(range(start)),
            examples_kept=examples_kept and bool(r.examples),
            budget=budget,
            n_ctx=n_ctx,
            reserve=reserve,
            evicted_now=evicted,
            notes=list(r.notes),
            insertions=insertions,
            segmentable=r.segmentable,
        )
        tok = self.tokenizer
        if tok is None:
            return built
        tokens: list[int] = []
        first = next((s.text for s in segments if s.text), "")
        if self._wants_bos(first):
            tokens.append(tok.bos_token)
            segments.insert(0, Segment("bos", "", None, [tok.bos_token]))
            for insertion in insertions:  # their segments moved one along
                if insertion.segment is not None:
                    insertion.segment += 1
        pinned_n = len(tokens)
        seen_text = False
        for s in segments:
            if s.kind == "bos":
                continue
            s.tokens = tok.segment(s.text, first=not seen_text)
            seen_text = seen_text or bool(s.text)
            tokens += s.tokens
            if s.kind == "pinned" or (s.kind == "example" and self.pin_examples):
                pinned_n += len(s.tokens)
        built.tokens = tokens
        built.pinned_tokens = pinned_n
        return built


def _insertion(
    placed: Placed, start: int, n_history: int, segment: int | None, folded_into: int | None = None
) -> Insertion:
    """Where an inserted message went, in the history's own numbering (deeper than the window: first in it)."""
    at = max(placed.at, start)
    before = at if at < n_history else None
    return Insertion(placed.kinds, placed.depth, placed.role, placed.text, before, segment, folded_into)
