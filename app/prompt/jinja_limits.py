"""The budget one chat-template render runs under, and how big a value would print.

A chat template is code from a downloaded file. Jinja's sandbox stops it reaching
Python's internals, but not from spending: one C-level operation (`'a' * 10**9`,
`10 ** 10**10`, `'x'.center(10**9)`) cannot be interrupted once started, so every
such operation is sized *before* it runs, against the numbers here; what loops or
recurses is ticked, and a tick past the deadline ends the render. Memory that grows
through many small steps (a list of slices kept in a namespace) is caught by
sampling the process's own anonymous memory every few milliseconds.

The estimates are upper bounds on `len(str(value))` and friends, found by walking
the value iteratively (no recursion, so a value nested a million deep cannot crash
the walk) and stopping as soon as the bound is passed: their cost is bounded by the
limit, not by the value. The same walk refuses values nested deeper than
`MAX_DEPTH`, because Python hashes tuples recursively in C without a depth check:
hashing a tuple nested 10**6 deep crashes the interpreter.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import ItemsView, KeysView, Mapping, ValuesView
from contextvars import ContextVar
from typing import Any

# One render: the bounds are 2 s and 256 MB. The deadline leaves a margin for
# what happens around the render (preparing the template, unwinding the error), so the
# whole call stays within 2 s. Memory is sampled, so one operation may pass the ceiling
# by what it allocates before the next sample; the ceiling is kept below 256 MB by that
# margin.
SECONDS = 1.5
MEMORY_BYTES = 192 * 1024 * 1024
CONVERSATION_SECONDS = 5.0  # all the renders of one prompt: the bound for one input
PER_MESSAGE_SECONDS = 0.0005  # ...plus this for each message given to each render (see Budget)
MEMORY_EVERY = 0.002  # seconds between memory samples while rendering
QUIET_BYTES = 8 * 1024 * 1024  # an operation predicted to need more is checked against memory first

# Text: a prompt is the conversation plus the format's markers, so the cap follows the
# input (4x leaves room for markers, JSON escaping and a template that writes the
# system prompt twice) with a floor that no honest chat template comes near (a few
# KB of markers). 4M characters is at most 16 MB as a Python string.
MIN_TEXT = 4_000_000
TEXT_PER_INPUT = 4
# Everything written anywhere (macro bodies, {% set %} blocks, the output) may add up
# to this many times the cap: a macro's text is written once in the macro and once
# where it is used.
WRITES_PER_TEXT = 4

# Lists, dicts and ranges: far above any conversation (messages) or tool list.
MAX_ITEMS = 262_144
MAX_RANGE = 100_000  # Jinja's own sandbox bound, kept
# Integers: a chat template counts turns; 8192 bits is ~2,500 digits, far below
# Python's 4,300-digit conversion limit, and cheap to multiply or divide.
MAX_INT_BITS = 8192
MAX_DEPTH = 64  # nesting of lists, dicts and tuples a template may hash, compare or print
# The template itself: Jinja's parser and Python's compiler spend ~40 us and ~3.5 KB per
# token of a dense template (a 64 KB one took 2 s and 180 MB here), so the tokens are
# counted before parsing. The largest real templates (tool use, reasoning) are ~20 KB
# and ~4,000 tokens; Mistral Small 3.1's is 6.6 KB and 1,341 tokens.
MAX_TEMPLATE_CHARS = 128 * 1024
MAX_TEMPLATE_TOKENS = 16_384

_UNKNOWN = 256  # what an object we do not know prints as: a repr like <Macro 'x'>


class LimitExceeded(Exception):
    """A template went past one of the bounds; the message says which, in a few words."""


class Budget:
    """Time shared by all the renders of one prompt: segmenting a conversation renders the
    template once per message, so a template that takes just under the per-render limit
    would otherwise cost that limit once per message.

    It starts at CONVERSATION_SECONDS and grows by PER_MESSAGE_SECONDS for every message
    each render is given: some thirty times what an honest template needs per message
    here (GLM-4.6's template, one of the costliest, takes ~15 us), so a long honest chat
    is not refused, while a hostile template on a short chat is refused within seconds.
    """

    __slots__ = ("deadline", "seconds")

    def __init__(self, seconds: float = CONVERSATION_SECONDS) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def allow(self, messages: int) -> None:
        extra = messages * PER_MESSAGE_SECONDS
        self.seconds += extra
        self.deadline += extra


class Guard:
    """The deadline, memory ceiling and size caps of one render, checked by every hook."""

    __slots__ = (
        "_late",
        "_memory_base",
        "_next_sample",
        "deadline",
        "text_cap",
        "write_cap",
        "written",
    )

    def __init__(self, *, text_cap: int, seconds: float = SECONDS, budget: Budget | None = None) -> None:
        now = time.monotonic()
        self.deadline = now + seconds
        self._late = f"it took longer than {seconds:g} s"
        if budget is not None and budget.deadline < self.deadline:
            self.deadline = budget.deadline
            self._late = f"rendering the conversation took longer than {budget.seconds:.1f} s in all"
        self.text_cap = text_cap
        self.write_cap = text_cap * WRITES_PER_TEXT
        self.written = 0
        # Memory is first read at the first sample, not here: a render that ends within
        # MEMORY_EVERY (every honest one) never reads it.
        self._memory_base: int | None = None
        self._next_sample = now + MEMORY_EVERY

    def tick(self) -> None:
        """Called at every loop step, call, filter, operator and write."""
        now = time.monotonic()
        if now >= self._next_sample:
            if now > self.deadline:
                raise LimitExceeded(self._late)
            self._next_sample = now + MEMORY_EVERY
            self.check_memory()

    def check_memory(self, extra: int = 0) -> None:
        used = memory_in_use()
        if self._memory_base is None:
            self._memory_base = used
        if used - self._memory_base + extra > MEMORY_BYTES:
            raise LimitExceeded(f"it needed more than {MEMORY_BYTES // (1024 * 1024)} MB of memory")

    def reserve(self, nbytes: int) -> None:
        """Before an operation predicted to allocate `nbytes`: is there room for it?"""
        if nbytes > MEMORY_BYTES:
            raise LimitExceeded(f"it needed more than {MEMORY_BYTES // (1024 * 1024)} MB of memory")
        if nbytes > QUIET_BYTES:
            self.check_memory(nbytes)

    def text(self, n: int) -> None:
        if n > self.text_cap:
            raise LimitExceeded(f"it made a text of more than {self.text_cap:,} characters")
        if n > QUIET_BYTES // 4:
            self.reserve(n * 4)

    def items(self, n: int) -> None:
        if n > MAX_ITEMS:
            raise LimitExceeded(f"it made a list of more than {MAX_ITEMS:,} items")
        if n > QUIET_BYTES // 8:
            self.reserve(n * 8)

    def write(self, n: int) -> None:
        self.written += n
        if self.written > self.write_cap:
            raise LimitExceeded(f"it wrote more than {self.write_cap:,} characters")


_CURRENT: ContextVar[Guard | None] = ContextVar("cattery_template_guard", default=None)


def current() -> Guard:
    """The guard of the render in progress; sandboxed code outside a render fails closed."""
    guard = _CURRENT.get()
    if guard is None:
        raise LimitExceeded("it ran outside a guarded render")
    return guard


def activate(guard: Guard) -> Any:
    return _CURRENT.set(guard)


def deactivate(token: Any) -> None:
    _CURRENT.reset(token)


def int_bits(n: int) -> None:
    if n > MAX_INT_BITS:
        raise LimitExceeded(f"it made a number of more than {MAX_INT_BITS} bits")


# -- memory --------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_process: Any = None


def memory_in_use() -> int:
    """Anonymous resident memory of this process: what Python allocates, not the mmapped model."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/statm", "rb") as f:
                fields = f.read().split()
            return (int(fields[1]) - int(fields[2])) * _PAGE
        except (OSError, ValueError, IndexError):  # pragma: no cover - /proc not mounted
            pass
    global _process
    if _process is None:
        import psutil

        _process = psutil.Process()
    return int(_process.memory_info().rss)


# -- sizes ---------------------------------------------------------------------------

_SCALARS = (str, int, float, bool, type(None))


def _nested_str(s: str) -> int:
    """Length of repr(s) at most: printable text doubles only by escaped quotes and backslashes."""
    return 2 * len(s) + 2 if s.isprintable() else 10 * len(s) + 2


def _namespace_attrs(value: Any) -> Mapping[str, Any] | None:
    try:
        attrs = object.__getattribute__(value, "_Namespace__attrs")
    except AttributeError:
        return None
    return attrs if isinstance(attrs, dict) else None


def text_size(value: Any, limit: int, *, nested: bool = False) -> int:
    """An upper bound on len(str(value)) (len(repr(value)) when `nested`), or a number
    past `limit` as soon as it is clear the text would be longer than that.

    Raises LimitExceeded for values nested deeper than MAX_DEPTH.
    """
    kind = type(value)
    if kind is str and not nested:
        return len(value)
    total = 0
    steps = 0
    stack: list[tuple[Any, int, bool]] = [(value, 0, nested)]
    while stack:
        item, depth, inner = stack.pop()
        if isinstance(item, str):
            total += _nested_str(item) if inner else len(item)
        elif isinstance(item, (bool, type(None))):
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, float):
            total += 24
        elif isinstance(item, (bytes, bytearray)):
            total += 4 * len(item) + 3
        elif isinstance(item, (list, tuple, set, frozenset, KeysView, ValuesView)):
            if depth >= MAX_DEPTH:
                raise LimitExceeded(f"it nested values more than {MAX_DEPTH} levels deep")
            total += 16 + 2 * len(item)
            if total > limit:
                return total
            stack.extend((x, depth + 1, True) for x in item)
        elif isinstance(item, (Mapping, ItemsView)):
            if depth >= MAX_DEPTH:
                raise LimitExceeded(f"it nested values more than {MAX_DEPTH} levels deep")
            pairs = item if isinstance(item, ItemsView) else item.items()
            total += 16 + 4 * len(item)
            if total > limit:
                return total
            for key, val in pairs:
                stack.append((key, depth + 1, True))
                stack.append((val, depth + 1, True))
        else:
            attrs = _namespace_attrs(item)
            if attrs is not None:
                stack.append((attrs, depth, True))
                total += 14
            else:
                total += _UNKNOWN
        if total > limit:
            return total
        steps += 1
        if not steps & 1023:
            current().tick()
    return total


def json_size(value: Any, limit: int, indent: int) -> int:
    """An upper bound on len(json.dumps(value, indent=...)) where `indent` is the length of
    one level of indentation (-1 for none), or a number past `limit` once it is clear."""
    total = 0
    steps = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    per_item = 2 if indent < 0 else 3
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            # Quotes, escaped quotes and backslashes; \uXXXX (or a surrogate pair) for the rest.
            total += 2 * len(item) + 2 if item.isascii() and item.isprintable() else 12 * len(item) + 2
        elif isinstance(item, (bool, type(None))):
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, float):
            total += 24
        elif isinstance(item, (list, tuple, Mapping)):
            if depth >= MAX_DEPTH:
                raise LimitExceeded(f"it nested values more than {MAX_DEPTH} levels deep")
            margin = per_item + (depth + 1) * max(indent, 0)
            total += 2 + len(item) * margin + depth * max(indent, 0)
            if total > limit:
                return total
            if isinstance(item, Mapping):
                for key, val in item.items():
                    stack.append((key, depth + 1))
                    stack.append((val, depth + 1))
            else:
                stack.extend((x, depth + 1) for x in item)
        else:
            total += _UNKNOWN  # json.dumps refuses it; a TypeError follows
        if total > limit:
            return total
        steps += 1
        if not steps & 1023:
            current().tick()
    return total


def int_text(n: int) -> int:
    """Characters any formatting of int `n` can take (binary with separators at most)."""
    bits = abs(n).bit_length()
    return bits + bits // 3 + 4


def check_operand(value: Any) -> Any:
    """A value about to be compared, hashed or looked up: its work is bounded by its size.

    `[s] * 200000 == [t] * 200000` compares 200,000 pairs of long strings in C; a tuple
    nested a million deep crashes `hash`. Scalars pass at once, and so do small flat
    containers (a message dict) whose size is plain to see.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    guard = current()
    if (kind is dict or kind is list or kind is tuple) and len(value) <= 64:
        items = value.values() if kind is dict else value
        if all(type(v) in _SCALARS for v in items):
            bound = sum(10 * len(v) + 2 if type(v) is str else 30 for v in items) + 40 * len(value)
            if bound <= guard.text_cap:
                return value
    if text_size(value, guard.text_cap) > guard.text_cap:
        raise LimitExceeded(f"it compared or hashed a value of more than {guard.text_cap:,} characters")
    return value
