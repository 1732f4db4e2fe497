"""Reading a tensor as a fresh float32 array, with no more memory than the result.

`Checkpoint.f32` gives a read-only view for float32 files and widens bf16 through two
temporaries; a merge overwrites what it reads and holds two or three tensors at once, so
it reads here: one float32 array, the stored words widened into it in place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converters.checkpoint import CheckpointError

FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


def read_f32(ck: Any, name: str) -> np.ndarray:
    """The tensor `name` of a Checkpoint, as a writable float32 array of its own."""
    ref = ck.tensors[name]
    if ref.dtype not in FLOAT_TYPES:
        raise CheckpointError(f"{ref.file}: tensor {name} is {ref.dtype}, not a floating-point type to merge")
    raw = ck.raw(name)
    if ref.dtype == "BF16":
        words = np.empty(raw.shape, dtype=np.uint32)
        words[...] = raw
        words <<= 16
        return words.view(np.float32)
    out = np.empty(raw.shape, dtype=np.float32)
    out[...] = raw
    return out
