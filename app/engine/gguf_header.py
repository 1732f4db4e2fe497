"""A streaming reader for the header of a GGUF file: metadata and tensor directory, no weights.

gguf-py's `GGUFReader` memory-maps the file and builds a numpy view for every
array element; for a 49k-token vocabulary that is 250k views and about 5 seconds,
on every model load. Cattery needs a few dozen scalars, so this reader walks the
header once from any binary file object (a local file now, a ranged HTTP file for
the hub later), keeps scalars and short arrays, and only remembers where long
arrays (vocabularies, merges) are, reading single entries on demand. The type
codes and block sizes come from gguf-py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
SHORT_ARRAY = 64  # arrays up to this many items are read whole

# GGUF value type codes (gguf.GGUFValueType) → struct format of one item.
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    pass


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

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    @property
    def data_end(self) -> int:
        return self.data_offset + max((t.offset + t.n_bytes for t in self.tensors), default=0)


class _Reader:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise GGUFFormatError("the file ends inside its header (truncated?)")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 30:
            raise GGUFFormatError(f"a string of {n} bytes in the header: damaged file")
        return self.read(n).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.f.seek(self.unpack("<Q"), 1)

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.unpack("<I"), self.unpack("<Q")
            if count <= SHORT_ARRAY:
                return [self.value(item_type) for _ in range(count)]
            ref = ArrayRef(item_type, count, self.f.tell())
            self.skip_items(item_type, count)
            return ref
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise GGUFFormatError(f"unknown value type {vtype} in the header: damaged file")
        return self.unpack(fmt)

    def skip_items(self, item_type: int, count: int) -> None:
        if item_type == _STRING:
            for _ in range(count):
                self.skip_string()
        elif item_type == _ARRAY:
            for _ in range(count):
                self.value(_ARRAY)
        else:
            fmt = _SCALAR_FORMATS.get(item_type)
            if fmt is None:
                raise GGUFFormatError(f"unknown array type {item_type}: damaged file")
            self.f.seek(struct.calcsize(fmt) * count, 1)


def read_header(f: BinaryIO) -> GGUFHeader:
    import gguf

    r = _Reader(f)
    if r.read(4) != GGUF_MAGIC:
        raise GGUFFormatError("not a GGUF file")
    version = r.unpack("<I")
    if version & 0xFFFF == 0:
        raise GGUFFormatError("a big-endian GGUF file, which llama.cpp on this machine cannot use")
    if version not in (2, 3):
        raise GGUFFormatError(f"GGUF version {version} is not supported")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    header = GGUFHeader(version)
    for _ in range(n_kv):
        key = r.string()
        header.fields[key] = r.value(r.unpack("<I"))
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.unpack("<I")
        shape = tuple(r.unpack("<Q") for _ in range(n_dims))
        ggml_type, offset = r.unpack("<I"), r.unpack("<Q")
        n_elements = 1
        for d in shape:
            n_elements *= d
        try:
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise GGUFFormatError(f"tensor {name} has unknown type {ggml_type}") from None
        header.tensors.append(TensorInfo(name, shape, ggml_type, offset, n_elements, n_elements * size // block))
    alignment = int(header.fields.get("general.alignment", DEFAULT_ALIGNMENT) or DEFAULT_ALIGNMENT)
    pos = f.tell()
    header.data_offset = pos + (-pos % alignment)
    return header


def read_array_item(f: BinaryIO, ref: ArrayRef, index: int) -> Any:
    """One entry of a long array, e.g. a token's text from the vocabulary."""
    if not 0 <= index < ref.count:
        raise IndexError(index)
    r = _Reader(f)
    f.seek(ref.offset)
    r.skip_items(ref.item_type, index)
    return r.value(ref.item_type)
