"""Deciding how much of a new prompt the KV cache already holds.

Two kinds of reuse: the longest common prefix (the next turn of a chat), and a
context shift: when the window slid, the new prompt is "pinned block + a later run
of the cached turns + new text". Then the evicted span is removed from the cache,
the run after it moves left, and only the new text is evaluated. Cattery's prompts
are concatenations of per-message token segments, so the run re-appears token for
token and the match is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MIN_SHIFT_RUN = 16  # shorter matches are not worth a shift (and may be coincidence)
PROBE = 8  # tokens compared before a candidate is followed to its end


def common_prefix(a: Sequence[int], b: Sequence[int], start_a: int = 0, start_b: int = 0) -> int:
    n = min(len(a) - start_a, len(b) - start_b)
    i = 0
    while i < n and a[start_a + i] == b[start_b + i]:
        i += 1
    return i


@dataclass(frozen=True)
class ReusePlan:
    keep: int  # cache tokens kept where they are (the common prefix)
    shift_from: int  # cache index where the shifted run starts; == keep when nothing shifts
    shifted: int  # tokens of that run that are kept, moved left by `removed`
    prompt_tokens: int

    @property
    def removed(self) -> int:
        return self.shift_from - self.keep if self.shifted else 0

    @property
    def reused(self) -> int:
        return self.keep + self.shifted

    @property
    def to_evaluate(self) -> int:
        return self.prompt_tokens - self.reused


def plan_reuse(
    cached: Sequence[int], prompt: Sequence[int], can_shift: bool, min_run: int = MIN_SHIFT_RUN
) -> ReusePlan:
    """How to turn the cache into a prefix of `prompt`. At least one prompt token is
    always left to evaluate, since generation needs its logits."""
    limit = len(prompt) - 1
    keep = min(common_prefix(cached, prompt), limit)
    none = ReusePlan(keep, keep, 0, len(prompt))
    if not can_shift or keep >= limit or keep >= len(cached):
        return none
    probe = list(prompt[keep : keep + min(PROBE, limit - keep)])
    first = probe[0]
    i = keep + 1
    while True:
        try:
            i = cached.index(first, i) if isinstance(cached, list) else list(cached).index(first, i)
        except ValueError:
            return none
        if list(cached[i : i + len(probe)]) == probe:
            run = min(common_prefix(cached, prompt, i, keep), limit - keep)
            return ReusePlan(keep, i, run, len(prompt)) if run >= min_run else none
        i += 1
