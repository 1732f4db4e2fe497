"""The token-budgeted sliding window over a conversation.

The pinned block never moves. The history after it slides: when the prompt would
not leave room for the reply, example dialogue goes first (unless pinned), then
the oldest whole messages, until the prompt fits with some slack to spare, so that
the next eviction is several turns away (each eviction costs a cache shift; each
turn without one costs nothing). The window only ever moves forward; what fell out
is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.errors import ContextOverflowError

SLACK = 0.25  # share of the history budget freed by an eviction


@dataclass
class WindowState:
    """Where the window starts; the chat keeps it from turn to turn."""

    start: int = 0
    examples_dropped: bool = False


@dataclass
class WindowFit:
    start: int
    examples_kept: bool
    total: int
    budget: int
    evicted_now: list[int] = field(default_factory=list)


def fit_window(
    pinned: int,
    examples: int,
    turns: Sequence[int],
    generation: int,
    budget: int,
    state: WindowState,
    roles: Sequence[str],
    pin_examples: bool = False,
    slack: float = SLACK,
) -> WindowFit:
    """Choose the first message to keep. Token counts in, indices out; `state` is updated."""
    fixed = pinned + generation
    if fixed > budget:
        raise ContextOverflowError(
            f"the pinned block (system prompt and character) and the reply prefix take {fixed} tokens, "
            f"more than the {budget} the context leaves after the reply's reserve; shorten the system prompt "
            "or use a larger --ctx"
        )
    start = min(state.start, len(turns))
    keep_examples = bool(examples) and (pin_examples or not state.examples_dropped)

    def total(s: int, with_examples: bool) -> int:
        return fixed + (examples if with_examples else 0) + sum(turns[s:])

    evicted: list[int] = []
    if total(start, keep_examples) > budget:
        target = budget - int(slack * (budget - fixed))
        if keep_examples and not pin_examples:
            keep_examples = False
            state.examples_dropped = True
        last = len(turns) - 1
        if total(start, keep_examples) <= budget:
            target = budget  # dropping the examples made room: no message needs to leave
        while start < last and total(start, keep_examples) > target:
            evicted.append(start)
            start += 1
        # Never start the window on an assistant reply: whole exchanges leave together.
        while start < last and roles[start] == "assistant":
            evicted.append(start)
            start += 1
        if total(start, keep_examples) > budget:
            raise ContextOverflowError(
                f"the newest message does not fit: the prompt would be {total(start, keep_examples)} tokens "
                f"and the context leaves {budget} after the reply's reserve; shorten it or use a larger --ctx"
            )
    state.start = start
    return WindowFit(start, keep_examples, total(start, keep_examples), budget, evicted)
