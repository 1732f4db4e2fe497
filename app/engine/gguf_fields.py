"""Known GGUF keys read by type and range, with one line naming the file and the key when wrong.

A header holds whatever its writer put there: `general.alignment` may be a string,
`bos_token_id` a float, `context_length` 2^63, `rope.freq_base` NaN. Code that reads
a key trusts the type it expects, so a wrong one used to surface far away as a
TypeError or an OverflowError. Every known key is read through one accessor here that
says what the value should be, refuses it in one line otherwise ("model.gguf:
general.name should be a string, not an integer (7)"), and, where llama.cpp itself
carries on with a default, falls back the same way and keeps a warning for the user.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, BinaryIO

from app.engine.gguf_header import (
    ARRAY,
    FLOAT_TYPES,
    INTEGER_TYPES,
    STRING,
    TYPE_NAMES,
    ArrayRef,
    GGUFFormatError,
    GGUFHeader,
    quoted,
    read_array,
)

U32_MAX = (1 << 32) - 1
PER_LAYER_MAX = 4096  # a per-layer array is at most one entry a layer (llama.cpp: 512 layers)


def _describe(vtype: int, item_type: int | None, value: Any) -> str:
    """What the file holds, for an error line: 'a string ('abc')', 'an array of 3 u32'."""
    if vtype == ARRAY:
        count = len(value) if isinstance(value, ArrayRef | list) else 0
        return f"an array of {count:,} {TYPE_NAMES.get(item_type or -1, 'values')}"
    if vtype == STRING:
        return f"a string ({quoted(str(value), 30)})"
    if vtype in INTEGER_TYPES:
        return f"an integer ({value})"
    if vtype in FLOAT_TYPES:
        return f"a number ({value})"
    return f"a {TYPE_NAMES.get(vtype, 'value')} ({value})"


class Fields:
    """Typed, range-checked reads of one header's values; `warnings` holds what was let go."""

    def __init__(self, header: GGUFHeader, f: BinaryIO | None = None) -> None:
        self.header = header
        self.f = f  # for per-layer arrays long enough to have been left on disk
        self.source = header.source
        self.warnings: list[str] = []

    def __contains__(self, key: str) -> bool:
        return key in self.header.fields

    def fail(self, key: str, problem: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.source}: {key} {problem}")

    def warn(self, key: str, problem: str) -> None:
        self.warnings.append(f"{self.source}: {key} {problem}")

    def _kind(self, key: str) -> tuple[int, int | None]:
        return self.header.types.get(key, (-1, None))

    def wrong(self, key: str, should: str) -> GGUFFormatError:
        vtype, item_type = self._kind(key)
        return self.fail(key, f"should be {should}, not {_describe(vtype, item_type, self.header.fields[key])}")

    # -- scalars ------------------------------------------------------------------------------

    def integer(
        self,
        key: str,
        lo: int = 0,
        hi: int = U32_MAX,
        *,
        per_layer: bool = False,
        pick: Callable[[list[int]], int] = max,
        zero_unknown: bool = False,
    ) -> int | None:
        """An integer in [lo, hi], or None when absent. A per-layer array gives one entry,
        `pick`ed (the largest by default), checked against the range.

        `zero_unknown`: 0 is how some writers say "unknown"; it reads as None, with a warning.
        """
        if key not in self.header.fields:
            return None
        vtype, item_type = self._kind(key)
        value = self.header.fields[key]
        if per_layer and vtype == ARRAY and item_type in INTEGER_TYPES:
            values = self._per_layer(key, value)
            if not values:
                return None
            value = pick(values)
        elif vtype not in INTEGER_TYPES:
            raise self.wrong(key, "an integer")
        if zero_unknown and value == 0:
            self.warn(key, "is 0: treated as unknown")
            return None
        if not lo <= value <= hi:
            raise self.fail(key, f"is {value:,}, out of range ({lo:,} to {hi:,})")
        return int(value)

    def _per_layer(self, key: str, value: list[Any] | ArrayRef) -> list[int]:
        if isinstance(value, list):
            return value
        if value.count > PER_LAYER_MAX:
            raise self.fail(key, f"has {value.count:,} per-layer entries; no model has that many layers")
        if self.f is None:  # a long array left on disk, and no file to read it from here
            raise self.wrong(key, "an integer")
        return read_array(self.f, value, PER_LAYER_MAX, self.source)

    def number(self, key: str, lo: float, hi: float) -> float | None:
        """A finite number in [lo, hi] (integers allowed), or None when absent."""
        if key not in self.header.fields:
            return None
        vtype, _ = self._kind(key)
        if vtype not in FLOAT_TYPES and vtype not in INTEGER_TYPES:
            raise self.wrong(key, "a number")
        value = float(self.header.fields[key])
        if not math.isfinite(value):
            raise self.fail(key, f"is {value}, not a finite number")
        if not lo <= value <= hi:
            raise self.fail(key, f"is {value:g}, out of range ({lo:g} to {hi:g})")
        return value

    def text(self, key: str, *, required_type: bool = True) -> str | None:
        """A string, or None when absent. With `required_type=False` any other type is let go
        with a warning (for keys llama.cpp only ever shows, never uses)."""
        if key not in self.header.fields:
            return None
        vtype, _ = self._kind(key)
        if vtype != STRING:
            if required_type:
                raise self.wrong(key, "a string")
            self.warn(key, f"is {_describe(*self._kind(key), self.header.fields[key])}, not text: ignored")
            return None
        return str(self.header.fields[key])

    def flag(self, key: str) -> bool | None:
        """true or false, or None when absent (llama.cpp refuses any other type for its flags)."""
        if key not in self.header.fields:
            return None
        vtype, _ = self._kind(key)
        if vtype != 7:
            raise self.wrong(key, "true or false")
        return bool(self.header.fields[key])

    # -- arrays -------------------------------------------------------------------------------

    def array(self, key: str, item_types: frozenset[int] | set[int], should: str) -> list[Any] | ArrayRef | None:
        """An array whose items are of one of `item_types` (a short one as a list), or None."""
        if key not in self.header.fields:
            return None
        vtype, item_type = self._kind(key)
        if vtype != ARRAY or item_type not in item_types:
            raise self.wrong(key, should)
        value = self.header.fields[key]
        assert isinstance(value, list | ArrayRef)
        return value

    def strings(self, key: str) -> list[str] | ArrayRef | None:
        return self.array(key, {STRING}, "an array of strings")
