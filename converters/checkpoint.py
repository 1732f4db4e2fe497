"""Hugging Face checkpoints read lazily and written tensor by tensor.

Reading: a folder with `config.json` and safetensors files (one, or shards with a
`model.safetensors.index.json`). Each tensor is a view of the memory-mapped file,
made only when asked for, so a 13B model is never in memory at once. Pickled
weights (`.bin`, `.pt`) are refused, never unpickled.

Writing: shapes and types are known before any data is computed (a merge or an
unpack plans its tensors first), so each shard's header is written first and the
tensors are streamed into it one at a time; an index ties the shards together.
Files are written under temporary names and renamed when complete.

Why not the `safetensors` package for the data: its numpy side cannot hold bfloat16
(most llama checkpoints are bf16) and `save_file` wants every tensor in memory at
once. The format itself is an 8-byte length, a JSON header and raw little-endian
data, which numpy maps directly; `safetensors` is still used to check what is
written here reads back.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.checkpoint_files import PICKLE_SUFFIXES, TOKENIZER_FILES
from app.errors import CatteryError

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
MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(CatteryError):
    pass


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


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(the JSON header, where the data starts) of a safetensors file."""
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise CheckpointError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER:
                raise CheckpointError(f"{path}: not a safetensors file (header of {n} bytes)")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not an object")
    return header, 8 + n


def tensors_of(path: Path) -> list[TensorRef]:
    header, start = read_header(path)
    size = path.stat().st_size
    out = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = meta["dtype"], tuple(int(d) for d in meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed entry") from None
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has an unsupported type {dtype}")
        if start + b > size or a > b:
            raise CheckpointError(f"{path}: truncated: tensor {name!r} ends past the end of the file")
        out.append(TensorRef(name, path, dtype, shape, start + int(a), int(b) - int(a)))
    return out


def as_float32(ref: TensorRef, data: np.ndarray) -> np.ndarray:
    if ref.dtype == "BF16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32, copy=False)


@dataclass
class Checkpoint:
    """An HF model folder: its config, its tokenizer files, its tensors (mapped, not loaded)."""

    folder: Path
    config: dict[str, Any]
    tensors: dict[str, TensorRef]

    @classmethod
    def open(cls, folder: Path) -> Checkpoint:
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: not a folder (a checkpoint is a folder with config.json)")
        config_path = folder / "config.json"
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{folder}: no config.json (a Hugging Face checkpoint needs one)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{config_path}: not readable JSON ({exc})") from None
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickled:
                raise CheckpointError(
                    f"{folder}: only pickled weights ({pickled[0]}): Cattery never unpickles files; "
                    "convert them to safetensors first, or download a safetensors version"
                )
            raise CheckpointError(f"{folder}: no .safetensors files")
        index = folder / "model.safetensors.index.json"
        wanted: set[Path] | None = None
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
            wanted = {folder / f for f in set(weight_map.values())}
            missing = sorted(p.name for p in wanted if not p.is_file())
            if missing:
                raise CheckpointError(f"{folder}: the index names shards that are missing: {', '.join(missing)}")
        tensors: dict[str, TensorRef] = {}
        for f in files:
            if wanted is not None and f not in wanted:
                continue
            for ref in tensors_of(f):
                tensors[ref.name] = ref
        return cls(folder, config, tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def names(self) -> list[str]:
        return list(self.tensors)

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored (BF16 as raw uint16), a read-only view of the file.

        Each tensor gets a mapping of its own bytes, unmapped when the array is dropped:
        pages of a mapping stay counted in the process's memory while it exists, so one
        mapping of a whole 26 GB file would grow to 26 GB over a conversion.
        """
        ref = self.tensors[name]
        if ref.nbytes == 0:
            return np.zeros(ref.shape, dtype=DTYPES[ref.dtype])
        return np.memmap(ref.file, dtype=DTYPES[ref.dtype], mode="r", offset=ref.offset, shape=ref.shape)

    def f32(self, name: str) -> np.ndarray:
        """The tensor as float32 (a copy for 16-bit types, a view for float32)."""
        return as_float32(self.tensors[name], self.raw(name))

    def tokenizer_files(self) -> list[Path]:
        return [self.folder / n for n in TOKENIZER_FILES if (self.folder / n).is_file()]

    def close(self) -> None:
        """Nothing stays open between tensors; kept so a Checkpoint is a context manager."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


# -- writing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorPlan:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype].itemsize
        for d in self.shape:
            n *= d
        return n


BF16_CHUNK = 1 << 20  # values rounded per step: the temporaries stay a few MB, not a tensor's size


def to_dtype(data: np.ndarray, dtype: str) -> np.ndarray:
    """float32 (or any float) data as the stored type; BF16 rounds as torch does.

    Torch rounds to nearest even and writes every NaN as 0x7FC0. The rounding runs a
    chunk at a time because a merge writes its largest tensor (the embeddings) while
    holding its inputs: whole-tensor temporaries would be two more float32 copies.
    """
    if dtype != "BF16":
        return np.ascontiguousarray(data, dtype=DTYPES[dtype])
    flat = np.ascontiguousarray(data, dtype=np.float32).reshape(-1).view(np.uint32)
    out = np.empty(flat.size, dtype=np.uint16)
    for start in range(0, flat.size, BF16_CHUNK):
        f = flat[start : start + BF16_CHUNK]
        r = f >> 16
        r &= np.uint32(1)
        r += np.uint32(0x7FFF)
        r += f
        r >>= 16
        words = r.astype(np.uint16)
        nan = (f & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
        if nan.any():
            words[nan] = 0x7FC0
        out[start : start + BF16_CHUNK] = words
    return out.reshape(np.shape(data))


class ShardedWriter:
    """Writes planned tensors in order into shards of at most `max_shard` bytes, with an index.

    `write(name, data)` must follow the plan's order; `close()` renames the shards into
    place and writes the index. An exception before `close()` leaves no file under a
    final name (`abort()`).
    """

    def __init__(
        self,
        folder: Path,
        plan: Iterable[TensorPlan],
        *,
        max_shard: int = 5 * 1024**3,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.plan = list(plan)
        self.metadata = {"format": "pt", **(metadata or {})}
        shards: list[list[TensorPlan]] = [[]]
        size = 0
        for t in self.plan:
            if shards[-1] and size + t.nbytes > max_shard:
                shards.append([])
                size = 0
            shards[-1].append(t)
            size += t.nbytes
        self.shards = shards
        n = len(shards)
        self.names = (
            ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self._order = [t.name for t in self.plan]
        self._next = 0
        self._shard = -1
        self._file: Any = None
        self._remaining: list[TensorPlan] = []
        self._tmp: list[Path] = []

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.plan)

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        self._shard += 1
        tensors = self.shards[self._shard]
        header: dict[str, Any] = {"__metadata__": self.metadata}
        offset = 0
        for t in tensors:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        tmp = self.folder / f".{self.names[self._shard]}.partial"
        self._tmp.append(tmp)
        self._file = tmp.open("wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._remaining = list(tensors)

    def write(self, name: str, data: np.ndarray) -> None:
        if self._next >= len(self._order) or self._order[self._next] != name:
            expected = self._order[self._next] if self._next < len(self._order) else "nothing more"
            raise ValueError(f"tensors must be written in the planned order: got {name}, expected {expected}")
        if not self._remaining:
            self._open_next()
        t = self._remaining.pop(0)
        if tuple(data.shape) != t.shape:
            raise ValueError(f"{name}: shape {tuple(data.shape)} is not the planned {t.shape}")
        self._file.write(memoryview(to_dtype(data, t.dtype)).cast("B"))
        self._next += 1

    def close(self) -> list[Path]:
        if self._next != len(self._order):
            raise ValueError(f"{len(self._order) - self._next} planned tensors were not written")
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        out = []
        for tmp, name in zip(self._tmp, self.names, strict=True):
            final = self.folder / name
            os.replace(tmp, final)
            out.append(final)
        if len(self.names) > 1:
            weight_map = {t.name: self.names[i] for i, shard in enumerate(self.shards) for t in shard}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            from app.atomic import write_text_atomic

            write_text_atomic(self.folder / "model.safetensors.index.json", json.dumps(index, indent=2))
        self._tmp = []
        return out

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for tmp in self._tmp:
            tmp.unlink(missing_ok=True)
        self._tmp = []

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()
