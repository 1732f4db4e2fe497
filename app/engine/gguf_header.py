"""A streaming reader for the header of a GGUF file: metadata and tensor directory, no weights.

gguf-py's `GGUFReader` memory-maps the file and builds a numpy view for every
array element; for a 49k-token vocabulary that is 250k views and about 5 seconds,
on every model load. Cattery needs a few dozen scalars, so this reader walks the
header once from any binary file object (a local file, or a ranged HTTP file for
the hub), keeps scalars and short arrays, and only remembers where long arrays
(vocabularies, merges) are, reading single entries on demand. The type codes and
block sizes come from gguf-py.

GGUF files come from strangers, and every count in a header is a claim. Each one
is checked against the bytes the file has left before it is believed, and the walk
as a whole has budgets (bytes, items, nesting) so that no header, however it lies,
costs more than a second or two and a few tens of MB, locally or over the network.
Everything refused is a `GGUFFormatError`: one line naming the file and the problem.
The structural checks are llama.cpp's own (gguf.cpp), made first, so that a file
llama.cpp would refuse is refused here with a clearer line, and one it would crash
on never reaches it.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from app.errors import InputError, ModelFileError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
SHORT_ARRAY = 64  # arrays up to this many items are read whole

# -- bounds (each far above any honest file, far below what would hurt) --------------------
# Honest files carry 20-100 keys and from ~100 to ~2,000 tensors (the largest MoE models;
# ~13k for an MoE with its experts unmerged). At these limits a header is read in ~1-2 s.
MAX_KV = 1 << 14
MAX_TENSORS = 1 << 16
MAX_KEY_BYTES = 65535  # the GGUF spec's limit on a key
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME is 64 with the NUL: llama.cpp refuses longer names
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8  # llama.cpp refuses arrays of arrays outright; gguf-py can write a few levels
# Bytes of header read or walked one item at a time (long numeric arrays are skipped by a
# seek and not counted). The largest honest headers (a 256k vocabulary with its merges)
# are 10-20 MB. This is also what a hub preview can be made to download.
MAX_HEADER_BYTES = 64 << 20
# Values read or walked one at a time (the strings of the vocabulary and merges, ~800k at
# most in honest files); about a second of Python at the most.
MAX_ITEMS = 1 << 22
MAX_KEPT = 1 << 18  # values kept as Python objects (short arrays, nested ones): honest files keep ~100
MAX_INT64 = (1 << 63) - 1

# GGUF value type codes (gguf.GGUFValueType) → struct of one item.
_SCALARS = {
    0: struct.Struct("<B"),
    1: struct.Struct("<b"),
    2: struct.Struct("<H"),
    3: struct.Struct("<h"),
    4: struct.Struct("<I"),
    5: struct.Struct("<i"),
    6: struct.Struct("<f"),
    7: struct.Struct("<?"),
    10: struct.Struct("<Q"),
    11: struct.Struct("<q"),
    12: struct.Struct("<d"),
}
UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9
INTEGER_TYPES = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
FLOAT_TYPES = frozenset({6, 12})
TYPE_NAMES = {
    0: "u8",
    1: "i8",
    2: "u16",
    3: "i16",
    4: "u32",
    5: "i32",
    6: "f32",
    7: "bool",
    8: "string",
    9: "array",
    10: "u64",
    11: "i64",
    12: "f64",
}
_U32, _U64 = _SCALARS[4], _SCALARS[10]
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, a one-byte key, the type, the smallest value
_MIN_TENSOR_BYTES = 8 + 1 + 4 + 4 + 8  # name length, a one-byte name, dims, type, offset
_CHUNK = 1 << 16


class GGUFFormatError(ModelFileError, InputError):
    """A GGUF header that is damaged, truncated or hostile; the message names the file."""


@dataclass(frozen=True)
class ArrayRef:
    """A long array left on disk: its item type, length and where its items start."""

    item_type: int
    count: int
    offset: int

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section
    n_elements: int
    n_bytes: int

    @property
    def type_name(self) -> str:
        import gguf

        try:
            return gguf.GGMLQuantizationType(self.ggml_type).name
        except ValueError:
            return f"type{self.ggml_type}"


@dataclass
class GGUFHeader:
    version: int
    fields: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    # where the tensor directory ends: the header's own bytes, before the padding to the data
    info_end: int = 0
    # each key's GGUF type code, and for arrays the items' type code
    types: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    source: str = "GGUF file"

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    @property
    def data_end(self) -> int:
        return self.data_offset + max((t.offset + t.n_bytes for t in self.tensors), default=0)


def quoted(text: str, limit: int = 60) -> str:
    """A name from the file for an error line: short, quoted, its newlines and controls escaped."""
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


def file_size(f: BinaryIO) -> int | None:
    """The size of what `f` reads, when it can be known without reading it."""
    try:
        st = os.fstat(f.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    else:
        return st.st_size if stat.S_ISREG(st.st_mode) else None
    size = getattr(f, "size", None)  # fsspec files (the hub's ranged reads)
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    try:
        here = f.tell()
        end = f.seek(0, io.SEEK_END)
        f.seek(here)
        return int(end)
    except (AttributeError, OSError, ValueError):
        return None


def _source_of(f: BinaryIO, source: str | None) -> str:
    if source:
        return source
    name = getattr(f, "name", None)
    return name if isinstance(name, str) else "GGUF file"


class _Reader:
    """Reads forward from `pos`, through its own buffer, counting what the walk has cost."""

    def __init__(self, f: BinaryIO, source: str, size: int | None, pos: int) -> None:
        self.f = f
        self.source = source
        self.size = size
        self.pos = pos
        self.buf = b""
        self.buf_at = 0
        self.spent = 0  # bytes read or walked
        self.items = 0  # values read or walked one at a time
        self.kept = 0  # values kept as Python objects
        self.context = ""  # "key 'x'" or "tensor 'y'", for the error line

    # -- errors and budgets -----------------------------------------------------------------

    def fail(self, problem: str) -> GGUFFormatError:
        where = f"{self.context}: " if self.context else ""
        return GGUFFormatError(f"{self.source}: {where}{problem}")

    def left(self) -> int:
        return MAX_INT64 if self.size is None else self.size - self.pos

    def need(self, n: int, what: str) -> None:
        """Refuse, before anything is read or allocated, `n` bytes the file does not have."""
        if n > self.left():
            raise self.fail(
                f"the file ends inside its header (truncated or damaged): {what} needs {n:,} bytes, "
                f"{max(self.left(), 0):,} are left"
            )

    def spend(self, n: int) -> None:
        self.spent += n
        if self.spent > MAX_HEADER_BYTES:
            raise self.fail(
                f"the header is larger than {MAX_HEADER_BYTES >> 20} MiB of metadata, "
                "far beyond any real model: damaged or hostile file"
            )

    def charge(self, count: int, *, keep: bool = False) -> None:
        self.items += count
        if self.items > MAX_ITEMS:
            raise self.fail(f"more than {MAX_ITEMS:,} values in the header: damaged or hostile file")
        if keep:
            self.kept += count
            if self.kept > MAX_KEPT:
                raise self.fail(f"more than {MAX_KEPT:,} short-array values in the header: damaged or hostile file")

    # -- raw reads --------------------------------------------------------------------------

    def _window(self, n: int) -> int:
        """Make the buffer hold bytes [pos, pos+n); return where pos is in it."""
        start = self.pos - self.buf_at
        if start >= 0 and start + n <= len(self.buf):
            return start
        want = max(n, _CHUNK)
        if self.size is not None:
            want = max(n, min(want, self.size - self.pos))
        self.f.seek(self.pos)
        data = self.f.read(want)
        if not isinstance(data, bytes | bytearray) or len(data) < n:
            raise self.fail("the file ends inside its header (truncated?)")
        self.buf, self.buf_at = bytes(data), self.pos
        return 0

    def take(self, n: int, what: str = "a value") -> bytes:
        self.need(n, what)
        self.spend(n)
        start = self._window(n)
        self.pos += n
        return self.buf[start : start + n]

    def scalar(self, st: struct.Struct, what: str = "a value") -> Any:
        self.need(st.size, what)
        self.spend(st.size)
        start = self._window(st.size)
        self.pos += st.size
        return st.unpack_from(self.buf, start)[0]

    def u32(self, what: str = "a number") -> int:
        return int(self.scalar(_U32, what))

    def u64(self, what: str = "a number") -> int:
        return int(self.scalar(_U64, what))

    def raw_string(self, limit: int, what: str) -> bytes:
        n = self.u64(f"the length of {what}")
        if n > limit:
            if n > self.left():
                self.need(n, what)
            raise self.fail(f"{what} of {n:,} bytes, more than the {limit:,} allowed")
        return self.take(n, what)

    # -- values -----------------------------------------------------------------------------

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype == STRING:
            return self.raw_string(MAX_HEADER_BYTES, "a string").decode("utf-8", errors="replace")
        if vtype == ARRAY:
            return self.array(depth)[1]
        st = _SCALARS.get(vtype)
        if st is None:
            raise self.fail(f"unknown value type {vtype}: damaged file")
        value = self.scalar(st)
        return bool(value) if vtype == BOOL else value

    def array(self, depth: int) -> tuple[int, list[Any] | ArrayRef]:
        """(the items' type, the items): a short array whole, a long one as a reference."""
        item_type, count = self.array_head(depth)
        if count <= SHORT_ARRAY:
            self.charge(count, keep=True)
            return item_type, [self.value(item_type, depth + 1) for _ in range(count)]
        ref = ArrayRef(item_type, count, self.pos)
        self.skip_items(item_type, count, depth + 1)
        return item_type, ref

    def array_head(self, depth: int) -> tuple[int, int]:
        """An array's item type and count, the count checked against the bytes left."""
        if depth >= MAX_ARRAY_DEPTH:
            raise self.fail(f"arrays nested more than {MAX_ARRAY_DEPTH} deep")
        item_type, count = self.u32("an array's item type"), self.u64("an array's length")
        if item_type == STRING:
            smallest = 8
        elif item_type == ARRAY:
            smallest = 12
        elif item_type in _SCALARS:
            smallest = _SCALARS[item_type].size
        else:
            raise self.fail(f"an array of unknown type {item_type}: damaged file")
        if count * smallest > self.left():
            raise self.fail(
                f"an array claims {count:,} items, more than the {self.left():,} bytes left in the file "
                "could hold (truncated or damaged file)"
            )
        return item_type, count

    def skip_items(self, item_type: int, count: int, depth: int) -> None:
        st = _SCALARS.get(item_type)
        if st is not None:
            self.need(st.size * count, "an array")
            self.pos += st.size * count  # a seek: nothing read, nothing downloaded
        elif item_type == STRING:
            self.skip_strings(count)
        else:  # ARRAY, already checked by array_head
            self.charge(count)
            for _ in range(count):
                inner_type, inner_count = self.array_head(depth)
                self.skip_items(inner_type, inner_count, depth + 1)

    def skip_strings(self, count: int) -> None:
        """Walk `count` strings, reading only their lengths: the vocabulary's hot loop."""
        self.charge(count)
        unpack = _U64.unpack_from
        done = 0
        while done < count:
            self.need(8, "a string's length")
            start = self._window(8)
            buf, p, end = self.buf, start, len(self.buf)
            while done < count and p + 8 <= end:
                (n,) = unpack(buf, p)
                p += 8 + n
                done += 1
                if p > end:
                    break
            walked = self.buf_at + p - self.pos
            if walked > self.left():
                raise self.fail("the file ends inside its header (truncated or damaged): a string in an array")
            self.spend(walked)
            self.pos += walked

    def strings(self, count: int) -> list[str]:
        """`count` strings read whole, through the buffer (a vocabulary for a converter)."""
        self.charge(count)
        unpack = _U64.unpack_from
        out: list[str] = []
        while len(out) < count:
            self.need(8, "a string's length")
            start = self._window(8)
            buf, p, end = self.buf, start, len(self.buf)
            while len(out) < count and p + 8 <= end:
                (n,) = unpack(buf, p)
                if p + 8 + n > end:
                    break
                out.append(buf[p + 8 : p + 8 + n].decode("utf-8", errors="replace"))
                p += 8 + n
            self.spend(self.buf_at + p - self.pos)
            self.pos = self.buf_at + p
            if len(out) < count and p + 8 <= end:  # one longer than the buffer: read on its own
                out.append(self.raw_string(MAX_HEADER_BYTES, "a string").decode("utf-8", errors="replace"))
        return out


def read_header(f: BinaryIO, source: str | None = None, size: int | None = None) -> GGUFHeader:
    """The header of the GGUF file `f` reads, from its start; `source` names it in errors.

    `size` is the file's size where `f` cannot tell (defaults to what `file_size` finds).
    """
    import gguf

    source = _source_of(f, source)
    size = file_size(f) if size is None else size
    r = _Reader(f, source, size, 0)
    if (size is not None and size < 4) or r.take(4) != GGUF_MAGIC:
        raise r.fail("not a GGUF file")
    version = r.u32()
    if version & 0xFFFF == 0:
        raise r.fail("a big-endian GGUF file, which llama.cpp on this machine cannot use")
    if version not in (2, 3):
        raise r.fail(f"GGUF version {version} is not supported")
    n_tensors, n_kv = r.u64(), r.u64()
    if n_kv > MAX_KV:
        raise r.fail(f"claims {n_kv:,} metadata entries; real models have a few dozen (at most {MAX_KV:,} accepted)")
    if n_tensors > MAX_TENSORS:
        raise r.fail(
            f"claims {n_tensors:,} tensors; real models have a few thousand at most ({MAX_TENSORS:,} accepted)"
        )
    if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_BYTES > r.left():
        raise r.fail(
            f"claims {n_kv:,} metadata entries and {n_tensors:,} tensors, "
            f"more than the {r.left():,} bytes left in the file could hold (truncated or damaged file)"
        )
    header = GGUFHeader(version, source=source)
    for i in range(n_kv):
        r.context = f"metadata entry {i}"
        raw = r.raw_string(MAX_KEY_BYTES, "a key")
        try:
            key = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise r.fail(f"key {quoted(raw.decode('utf-8', 'replace'))} is not UTF-8") from None
        if not key:
            raise r.fail("an empty key")
        if key in header.fields:
            raise r.fail(f"key {quoted(key)} appears twice")
        r.context = f"key {quoted(key)}"
        vtype = r.u32("a value type")
        if vtype == ARRAY:
            item_type, header.fields[key] = r.array(0)
            header.types[key] = (ARRAY, item_type)
        else:
            header.fields[key] = r.value(vtype)
            header.types[key] = (vtype, None)
    r.context = ""
    alignment = _alignment(header, r)
    names: set[str] = set()
    for i in range(n_tensors):
        r.context = f"tensor {i}"
        raw = r.raw_string(MAX_TENSOR_NAME, "a tensor name")
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise r.fail("its name is not UTF-8") from None
        r.context = f"tensor {quoted(name)}"
        if name in names:
            raise r.fail("appears twice in the tensor directory")
        names.add(name)
        header.tensors.append(_tensor_info(r, name, gguf))
    r.context = ""
    pos = header.info_end = r.pos
    header.data_offset = pos + (-pos % alignment) if header.tensors else pos
    expected = 0
    for t in header.tensors:
        if t.offset != expected:
            raise r.fail(
                f"tensor {quoted(t.name)} starts at byte {t.offset:,} of the data, expected {expected:,} "
                "(overlapping, misaligned or out-of-order tensors)"
            )
        expected += t.n_bytes + (-t.n_bytes % alignment)
    if size is not None and header.data_end > size:
        raise r.fail(
            f"truncated: the header promises {header.data_end:,} bytes, the file has {size:,} "
            "(an interrupted download?)"
        )
    return header


def _alignment(header: GGUFHeader, r: _Reader) -> int:
    if "general.alignment" not in header.fields:
        return DEFAULT_ALIGNMENT
    vtype, _ = header.types["general.alignment"]
    value = header.fields["general.alignment"]
    if vtype != UINT32:
        raise r.fail(f"general.alignment should be a u32 integer, not {TYPE_NAMES.get(vtype, 'unknown')}")
    if value <= 0 or value & (value - 1):
        raise r.fail(f"general.alignment {value} is not a power of two")
    return int(value)


def _tensor_info(r: _Reader, name: str, gguf: Any) -> TensorInfo:
    n_dims = r.u32("a tensor's dimension count")
    if n_dims > MAX_DIMS:
        raise r.fail(f"{n_dims} dimensions (at most {MAX_DIMS})")
    shape = tuple(r.u64("a tensor dimension") for _ in range(n_dims))
    n_elements = 1
    for d in shape:
        if d > MAX_INT64:
            raise r.fail(f"a dimension of {d:,} elements")
        n_elements *= d
    if n_elements > MAX_INT64:
        raise r.fail(f"shape {shape} holds more elements than a 64-bit count can")
    ggml_type, offset = r.u32("a tensor type"), r.u64("a tensor offset")
    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise r.fail(f"unknown tensor type {ggml_type}") from None
    row = shape[0] if shape else 1
    if row % block:
        raise r.fail(f"rows of {row} elements, not a multiple of the {block}-element blocks of its type")
    n_bytes = n_elements // block * size
    if offset > MAX_INT64 or n_bytes > MAX_INT64 - offset:
        raise r.fail(f"data at byte {offset:,} of {n_bytes:,} bytes lies beyond any file")
    return TensorInfo(name, shape, ggml_type, offset, n_elements, n_bytes)


def read_array_item(f: BinaryIO, ref: ArrayRef, index: int, source: str | None = None) -> Any:
    """One entry of a long array, e.g. a token's text from the vocabulary."""
    if not 0 <= index < ref.count:
        raise IndexError(index)
    r = _Reader(f, _source_of(f, source), file_size(f), ref.offset)
    r.skip_items(ref.item_type, index, 1)
    return r.value(ref.item_type, 1)


def read_array(f: BinaryIO, ref: ArrayRef, max_items: int, source: str | None = None) -> list[Any]:
    """A long array read whole (numbers as a list, strings as str), refused past `max_items`.

    For converters that need the whole vocabulary; a string array is read through one
    buffer, numbers with one `frombuffer`.
    """
    import numpy as np

    r = _Reader(f, _source_of(f, source), file_size(f), ref.offset)
    if ref.count > max_items:
        raise r.fail(f"an array of {ref.count:,} items, more than the {max_items:,} accepted")
    st = _SCALARS.get(ref.item_type)
    if st is not None:
        data = r.take(st.size * ref.count, "an array")
        if ref.item_type == BOOL:
            return [b != 0 for b in data]
        return np.frombuffer(data, dtype=np.dtype(st.format)).tolist()
    if ref.item_type != STRING:
        raise r.fail("nested arrays cannot be read whole")
    return r.strings(ref.count)
