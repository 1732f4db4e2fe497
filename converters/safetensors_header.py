"""The header of a safetensors file, checked as the format requires before any byte of it is trusted.

A safetensors file is an 8-byte little-endian length N, N bytes of JSON, then the data.
The JSON maps each tensor's name to `{dtype, shape, data_offsets: [begin, end]}` (offsets
into the data, after the header) and may hold `__metadata__`, a map of strings. The
reference reader (the `safetensors` package's `validate`) accepts a file only when the
spans, sorted, tile the data exactly from 0 to the end of the file, each holding exactly
shape × item-size bytes. The same is required here, because anything looser lets a
stranger's header point a tensor at the header itself (a negative offset), at another
tensor's bytes (an overlap), or at bytes that do not exist (a length of 2^60, a shape
larger than the file), and numpy would map whatever it was pointed at.

Bounds (why these numbers): a header of at most 4 MiB (an honest llama's is ~100 KB even
for a 405B model in one file; 4 MiB of the smallest entries is ~75,000 tensors, ~1 s and
~60 MB of Python objects to check), at most 8 dimensions of at most 2^32 each, names of
at most 1024 characters.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.untrusted import json_cost
from converters.errors import CheckpointError
from converters.untrusted_files import MAX_JSON_ITEMS, check_name_text

DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # stored as raw 16-bit words; `as_float32` widens them
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
MAX_HEADER = 4 * 1024 * 1024
MAX_DIMS = 8
MAX_DIM = 1 << 32
METADATA = "__metadata__"


@dataclass(frozen=True)
class TensorRef:
    name: str
    file: Path
    dtype: str  # safetensors' name: F32, F16, BF16, …
    shape: tuple[int, ...]
    offset: int  # from the start of the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _bad(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable safetensors file: {problem}")


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(the JSON header, where the data starts) of a safetensors file, its length checked against the file's."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            raw = f.read(8)
            if len(raw) != 8:
                raise _bad(path, f"{len(raw)} bytes, too short to hold a header")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER:
                raise _bad(path, f"a header of {n:,} bytes, more than any checkpoint has ({MAX_HEADER:,})")
            if n < 2:
                raise _bad(path, f"a header of {n} bytes")
            if 8 + n > size:
                raise _bad(path, f"the header says {n:,} bytes but only {size - 8:,} follow (truncated?)")
            text = f.read(n)
    except CheckpointError:
        raise
    except OSError as exc:
        raise _bad(path, exc.strerror or type(exc).__name__) from None
    if len(text) != n:
        raise _bad(path, "the file shrank while it was read")
    header = _parse(text, f"{path}: header")
    if not isinstance(header, dict):
        raise _bad(path, f"the header is {type(header).__name__}, not an object")
    return header, 8 + n


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _parse(raw: bytes, source: str) -> Any:
    """The header's JSON, parsed without the generic walk over every value (app.untrusted.check_structure):
    each entry's fields are type-checked here anyway, so a deep or odd value fails that check at once, and
    the walk was most of the time a large header takes. Depth is still bounded by the parser's recursion."""
    if json_cost(raw) > MAX_JSON_ITEMS:
        raise CheckpointError(f"{source}: holds more than {MAX_JSON_ITEMS:,} values, more than any honest file")
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise CheckpointError(f"{source}: nested too many levels deep") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{source}: not UTF-8 text") from None
    except ValueError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{source}: not valid JSON: {first}") from None


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _metadata(path: Path, meta: Any) -> None:
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _bad(path, f"{METADATA} must map names to strings")


def _entry(path: Path, name: str, meta: Any, start: int) -> TensorRef:
    check_name_text(name, str(path), "tensor name")
    if not isinstance(meta, dict):
        raise _bad(path, f"tensor {name!r}: its entry is {type(meta).__name__}, not an object")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str):
        raise _bad(path, f"tensor {name!r}: dtype should be a string, not {type(dtype).__name__}")
    if dtype not in DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has an unsupported type {dtype[:20]!r}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_int(d) and 0 <= d <= MAX_DIM for d in shape):
        raise _bad(path, f"tensor {name!r}: shape should be a list of at most {MAX_DIMS} sizes from 0 to 2^32")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_int(o) for o in offsets):
        raise _bad(path, f"tensor {name!r}: data_offsets should be two whole numbers [begin, end]")
    begin, end = offsets
    if begin < 0 or end < begin:
        raise _bad(path, f"tensor {name!r}: data_offsets [{begin}, {end}] is not a span of the data")
    count = 1
    for d in shape:
        count *= d
    nbytes = count * DTYPES[dtype].itemsize
    if end - begin != nbytes:
        raise _bad(
            path, f"tensor {name!r}: shape {shape} of {dtype} is {nbytes:,} bytes but its span is {end - begin:,}"
        )
    return TensorRef(name, path, dtype, tuple(shape), start + begin, nbytes)


def tensors_of(path: Path) -> list[TensorRef]:
    """Every tensor of a safetensors file, checked: types known, shapes matching their spans, and the
    spans tiling the data section exactly (no gap, no overlap, nothing past the end)."""
    return read_tensors(path)[0]


def read_tensors(path: Path) -> tuple[list[TensorRef], int]:
    """(`tensors_of`, where the data starts): the second is what reading the header cost."""
    path = Path(path)
    header, start = read_header(path)
    size = path.stat().st_size
    out = []
    for name, meta in header.items():
        if name == METADATA:
            _metadata(path, meta)
            continue
        out.append(_entry(path, name, meta, start))
    cursor = start
    for ref in sorted(out, key=lambda r: (r.offset, r.nbytes)):
        if ref.offset != cursor:
            kind = "overlaps the tensor before it" if ref.offset < cursor else "leaves a gap before it"
            raise _bad(path, f"tensor {ref.name!r} {kind} (at byte {ref.offset - start:,} of the data)")
        cursor += ref.nbytes
    if cursor != size:
        if cursor > size:
            raise _bad(
                path, f"truncated: the tensors need {cursor - start:,} bytes of data, the file has {size - start:,}"
            )
        raise _bad(path, f"{size - cursor:,} bytes after the last tensor belong to none")
    return out, start
