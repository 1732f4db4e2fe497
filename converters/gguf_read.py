"""A GGUF file read for conversion: every metadata value in full, tensors as mapped arrays.

`app.engine.gguf_header` walks the header fast but leaves long arrays (the vocabulary,
the merges) on disk; `unpack` needs them whole, and gguf-py's `GGUFReader` builds a
numpy view per array item (seconds for a 49k vocabulary). Here a long array is read
in one pass: strings with a small loop over one buffer, numbers with one `frombuffer`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.gguf_header import ArrayRef, GGUFFormatError, GGUFHeader, TensorInfo, read_header
from app.errors import CatteryError

# GGUF value type codes → numpy item types.
_NUMERIC = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STRING = 8
DEQUANT_BLOCKS = 1 << 15  # blocks per dequantization call (1M values for 32-value blocks)


@dataclass
class GGUFFile:
    path: Path
    header: GGUFHeader
    _values: dict[str, Any] = field(default_factory=dict, repr=False)
    _map: np.memmap | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path) -> GGUFFile:
        path = Path(path)
        try:
            with path.open("rb") as f:
                header = read_header(f)
        except FileNotFoundError:
            raise CatteryError(f"{path}: no such file") from None
        except (OSError, GGUFFormatError) as exc:
            raise CatteryError(f"{path}: not a readable GGUF file ({exc})") from None
        if header.data_end > path.stat().st_size:
            raise CatteryError(f"{path}: truncated (its tensors end past the end of the file)")
        return cls(path, header)

    def keys(self) -> list[str]:
        return list(self.header.fields)

    def __iter__(self) -> Iterator[str]:
        return iter(self.header.fields)

    def __contains__(self, key: object) -> bool:
        return key in self.header.fields

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value, long arrays read whole (strings as str, numbers as a list)."""
        if key not in self.header.fields:
            return default
        if key not in self._values:
            value = self.header.fields[key]
            self._values[key] = self._read_array(value) if isinstance(value, ArrayRef) else value
        return self._values[key]

    def _read_array(self, ref: ArrayRef) -> list[Any]:
        with self.path.open("rb") as f:
            f.seek(ref.offset)
            if ref.item_type in _NUMERIC:
                dtype = np.dtype(_NUMERIC[ref.item_type])
                return np.frombuffer(f.read(dtype.itemsize * ref.count), dtype=dtype).tolist()
            if ref.item_type != _STRING:
                raise CatteryError(f"{self.path}: nested arrays in the metadata are not supported")
            # Strings: an 8-byte length then the bytes, `count` times. Read a generous
            # buffer once and walk it; refill when a string runs past its end.
            out: list[str] = []
            buf = f.read(1 << 20)
            pos = 0
            unpack = struct.Struct("<Q").unpack_from
            for _ in range(ref.count):
                if pos + 8 > len(buf):
                    buf = buf[pos:] + f.read(1 << 20)
                    pos = 0
                (n,) = unpack(buf, pos)
                if pos + 8 + n > len(buf):
                    buf = buf[pos:] + f.read(max(n + 8, 1 << 20))
                    pos = 0
                out.append(buf[pos + 8 : pos + 8 + n].decode("utf-8", errors="replace"))
                pos += 8 + n
            return out

    @property
    def tensors(self) -> list[TensorInfo]:
        return self.header.tensors

    def raw(self, info: TensorInfo) -> np.ndarray:
        """The tensor's stored bytes (a read-only view of the mapped file)."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        start = self.header.data_offset + info.offset
        return self._map[start : start + info.n_bytes].view(np.ndarray)

    def f32(self, info: TensorInfo) -> np.ndarray:
        """The tensor dequantized to float32, in numpy's order (the GGUF shape reversed)."""
        import gguf

        qtype = gguf.GGMLQuantizationType(info.ggml_type)
        shape = tuple(reversed(info.shape))
        raw = self.raw(info)
        if qtype == gguf.GGMLQuantizationType.F32:
            return raw.view(np.float32).reshape(shape).copy()
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        out = np.empty(info.n_elements, dtype=np.float32)
        blocks = raw.reshape(-1, size)
        # gguf-py dequantizes 16 rows per numpy call; a chunk of many blocks as one row is
        # one vectorized call, several times faster, at a bounded cost in temporaries.
        for start in range(0, len(blocks), DEQUANT_BLOCKS):
            chunk = blocks[start : start + DEQUANT_BLOCKS]
            try:
                values = gguf.quants.dequantize(chunk.reshape(1, -1), qtype)
            except NotImplementedError:
                raise CatteryError(
                    f"{self.path}: tensor {info.name} is {qtype.name}, which gguf-py cannot dequantize"
                ) from None
            out[start * block : (start + len(chunk)) * block] = values.ravel()
        return out.reshape(shape)

    def close(self) -> None:
        self._map = None
