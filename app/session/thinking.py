"""A chat's thinking settings, and the thinking budget as a two-part generation.

`ThinkingPrefs` is what a chat does with a thinking model: keep the reasoning in later prompts or
not (SillyTavern's default: not), let the model think or open its reply with an empty block, and how
many tokens it may think before the block is closed for it.

The budget needs no engine support, so it holds for the local engine and any server alike: the
first `budget` tokens are generated as one generation; if the model is still thinking when they
run out, the closing marker is written after them and a second generation goes on from there to the
answer (the cache keeps the prompt and the thinking, so only the marker is evaluated again). The two
read as one `Generation` to whoever streams the turn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.prompt.reasoning import ReasoningMarkers, ReasoningSplitter

if TYPE_CHECKING:
    from app.engine.interface import ChatEngine
    from app.engine.options import SamplerSettings
    from app.engine.stats import GenerationStats

MAX_BUDGET = 1 << 20


@dataclass(frozen=True)
class ThinkingPrefs:
    keep: bool = False  # later prompts carry each reply's reasoning too
    enabled: bool = True  # off: a reply opens with the format's empty block (where it has one)
    budget: int = 0  # tokens of thinking before the block is closed for the model; 0: no limit

    @classmethod
    def from_mapping(cls, data: Any, base: ThinkingPrefs | None = None) -> ThinkingPrefs:
        """The chat's own choices (its `extra`) over `base`; a value of the wrong type is left out."""
        out = base or cls()
        if not isinstance(data, dict):
            return out
        changes: dict[str, Any] = {}
        for key in ("keep", "enabled"):
            if isinstance(data.get(key), bool):
                changes[key] = data[key]
        budget = data.get("budget")
        if isinstance(budget, int) and not isinstance(budget, bool) and 0 <= budget <= MAX_BUDGET:
            changes["budget"] = budget
        return dataclasses.replace(out, **changes)


def thought_summary(facts: Any) -> str:
    """How long a reply thought, as its provenance says ("thought for 35 tokens, 0.7 s"), and whether
    its block was closed at the budget or cut: worded once for the app, its details and the line chat."""
    head = "thought"
    if not isinstance(facts, dict):
        return head
    if facts.get("tokens"):
        head += f" for {facts['tokens']} tokens"
    if facts.get("seconds") is not None:
        head += f", {facts['seconds']} s"
    if facts.get("budget_closed"):
        head += " (closed at the thinking budget)"
    elif facts.get("open"):
        head += " (cut while thinking)"
    return head


class BudgetedGeneration:
    """A turn's generation with a thinking budget: the surface of `Generation` (iterate for pieces,
    `text`, `stats`, `cancel`, `result`), made of one or two generations."""

    def __init__(
        self,
        engine: ChatEngine,
        prompt_tokens: Sequence[int] | None,
        prompt_text: str,
        sampler: SamplerSettings,
        stop: Sequence[str],
        markers: ReasoningMarkers,
        budget: int,
        *,
        inside: bool = False,
        owner: object = None,
    ) -> None:
        self._engine = engine
        self._prompt_tokens = list(prompt_tokens) if prompt_tokens is not None else None
        self._prompt_text = prompt_text
        self.sampler = sampler
        self.stop = list(stop)
        self._markers = markers
        self._splitter = ReasoningSplitter(markers, inside=inside)
        self._owner = owner
        self._budget = min(budget, sampler.max_tokens)
        self._cancelled = False
        self.text = ""
        self.stats: GenerationStats | None = None
        self.closed_for_model = False  # the budget ran out while thinking: the block was closed for it
        self._current = self._start(sampler.updated(max_tokens=self._budget), [], "")

    def _start(self, sampler: SamplerSettings, extra_tokens: list[int], extra_text: str) -> Any:
        prompt: Any = self._prompt_text + extra_text
        if self._prompt_tokens is not None:
            prompt = self._prompt_tokens + extra_tokens
        return self._engine.generate(
            prompt, sampler, stop=self.stop, owner=self._owner, text=self._prompt_text + extra_text
        )

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        self._cancelled = True
        self._current.cancel()

    def __iter__(self) -> Iterator[str]:
        first = self._current
        for piece in first:
            self.text += piece
            self._splitter.feed(piece)
            yield piece
        stats = first.stats
        self.stats = stats
        if (
            self._cancelled
            or stats is None
            or stats.finish_reason != "length"
            or self._budget >= self.sampler.max_tokens
        ):
            return
        # The budget ran out. Still thinking: the block is closed here and the answer follows.
        insert = ""
        if self._splitter.thinking:
            insert = ("" if self.text.endswith("\n") else "\n") + self._markers.end + "\n\n"
            self.closed_for_model = True
            self.text += insert
            self._splitter.feed(insert)
            yield insert
        rest = self.sampler.max_tokens - stats.generated_tokens
        if rest <= 0:
            return
        written = self.text
        extra_tokens = self._engine.segment_tokenize(written) if self._prompt_tokens is not None else []
        second = self._start(self.sampler.updated(max_tokens=rest), extra_tokens, written)
        self._current = second
        if self._cancelled:
            second.cancel()
        for piece in second:
            self.text += piece
            self._splitter.feed(piece)
            yield piece
        self.stats = _joined(stats, second.stats)

    def result(self) -> str:
        for _ in self:
            pass
        return self.text


def _joined(first: GenerationStats, second: GenerationStats | None) -> GenerationStats:
    """The two parts' statistics as one turn's: the prompt as the first part saw it, the tokens and
    times of both, the end as the second part's."""
    if second is None:
        return first
    return dataclasses.replace(
        first,
        generated_tokens=first.generated_tokens + second.generated_tokens,
        decode_seconds=first.decode_seconds + second.prompt_seconds + second.decode_seconds,
        decode_steps=first.decode_steps + second.decode_steps,
        finish_reason=second.finish_reason,
        stop_string=second.stop_string,
    )
