"""A GGUF file read for conversion: every metadata value in full, tensors as mapped arrays.

`app.engine.gguf_header` walks the header fast but leaves long arrays (the vocabulary,
the merges) on disk; `unpack` needs them whole, and gguf-py's `GGUFReader` builds a
numpy view per array item (seconds for a 49k vocabulary). Here a long array is read
in one pass: strings with a small loop over one buffer, numbers with one `frombuffer`.

The file may come from anyone: the header is read with the same bounds as for loading a
model, a long array read whole is capped at `MAX_ARRAY_ITEMS`, and the typed accessors
(`text`, `integer`, `number`, `flag`, `strings`, `numbers`) give the converters each value
checked for type and range, or one line naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.gguf_fields import U32_MAX, Fields
from app.engine.gguf_header import ArrayRef, GGUFFormatError, GGUFHeader, TensorInfo, read_array, read_header
from app.errors import CatteryError

# Entries of one long array read whole: the largest vocabularies and merge lists have ~300k.
MAX_ARRAY_ITEMS = 1 << 20
DEQUANT_BLOCKS = 1 << 15  # blocks per dequantization call (1M values for 32-value blocks)


@dataclass
class GGUFFile:
    path: Path
    header: GGUFHeader
    _values: dict[str, Any] = field(default_factory=dict, repr=False)
    _map: np.memmap | None = field(default=None, repr=False)
    _fields: Fields | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path) -> GGUFFile:
        path = Path(path)
        if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO would block for ever
            raise CatteryError(f"{path}: not a regular file")
        try:
            with path.open("rb") as f:
                header = read_header(f, str(path))
            size = path.stat().st_size
        except FileNotFoundError:
            raise CatteryError(f"{path}: no such file") from None
        except GGUFFormatError as exc:
            problem = str(exc).removeprefix(f"{path}: ")
            raise GGUFFormatError(f"{path}: not a readable GGUF file ({problem})") from None
        except OSError as exc:
            raise CatteryError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
        if header.data_end > size:
            raise CatteryError(f"{path}: truncated (its tensors end past the end of the file)")
        return cls(path, header)

    @property
    def fields(self) -> Fields:
        """Typed reads of the metadata (for per-layer arrays long enough to be left on disk, see get)."""
        if self._fields is None:
            self._fields = Fields(self.header)
        return self._fields

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
        try:
            with self.path.open("rb") as f:
                return read_array(f, ref, MAX_ARRAY_ITEMS, str(self.path))
        except OSError as exc:
            raise CatteryError(f"{self.path}: cannot read: {exc.strerror or type(exc).__name__}") from None

    # -- typed reads: each value checked where a converter takes it ------------------------------

    def text(self, key: str, default: str | None = None, *, required_type: bool = True) -> str | None:
        value = self.fields.text(key, required_type=required_type)
        return default if value is None else value

    def integer(self, key: str, default: int | None = None, *, lo: int = 0, hi: int = U32_MAX) -> int | None:
        value = self.fields.integer(key, lo, hi)
        return default if value is None else value

    def number(self, key: str, default: float | None = None, *, lo: float, hi: float) -> float | None:
        value = self.fields.number(key, lo, hi)
        return default if value is None else value

    def flag(self, key: str, default: bool | None = None) -> bool | None:
        value = self.fields.flag(key)
        return default if value is None else value

    def strings(self, key: str) -> list[str] | None:
        """An array of strings read whole (a vocabulary, merges), or None."""
        if self.fields.strings(key) is None:
            return None
        return list(self.get(key))

    def numbers(self, key: str, item_types: set[int], should: str) -> list[Any] | None:
        """An array of numbers of one of `item_types` read whole (scores, token types), or None."""
        if self.fields.array(key, item_types, should) is None:
            return None
        return list(self.get(key))

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
