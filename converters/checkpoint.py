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
from converters.errors import CheckpointError
from converters.safetensors_header import DTYPES, MAX_HEADER, TensorRef, read_header, read_tensors, tensors_of
from converters.untrusted_files import check_name_text, own_file, read_json

__all__ = [
    "DTYPES",
    "MAX_HEADER",
    "PICKLE_SUFFIXES",
    "TOKENIZER_FILES",
    "Checkpoint",
    "CheckpointError",
    "ShardedWriter",
    "TensorPlan",
    "TensorRef",
    "as_float32",
    "read_header",
    "tensors_of",
    "to_dtype",
]
MAX_SHARDS = 4096  # an honest 405B model has 191
MAX_TENSORS = 100_000  # an honest llama has ~1,200; checking one costs ~15 µs and holding it ~300 bytes
MAX_HEADER_TOTAL = 64 * 1024 * 1024  # bytes of headers read for one checkpoint: ~1 s of parsing


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
        """Read and check everything but the weights' values: config.json is an object, every file is the
        folder's own, the index names only files beside it, every header is sound, no tensor is in two files."""
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: not a folder (a checkpoint is a folder with config.json)")
        config_path = folder / "config.json"
        if own_file(config_path, folder, required=False) is None:
            raise CheckpointError(f"{folder}: no config.json (a Hugging Face checkpoint needs one)")
        config = read_json(config_path, folder)
        for name in CHECKED_FILES:  # a link out of the folder is refused even where it is read later
            own_file(folder / name, folder, required=False)
        files = _weight_files(folder)
        wanted = _index_files(folder, files)
        tensors: dict[str, TensorRef] = {}
        header_bytes = 0
        for f in files:
            if wanted is not None and f.name not in wanted:
                continue
            own_file(f, folder)
            refs, data_start = read_tensors(f)
            header_bytes += data_start
            if header_bytes > MAX_HEADER_TOTAL:
                raise CheckpointError(f"{folder}: its safetensors headers hold more than {MAX_HEADER_TOTAL:,} bytes")
            for ref in refs:
                if ref.name in tensors:
                    raise CheckpointError(
                        f"{folder}: tensor {ref.name} is in both {tensors[ref.name].file.name} and {f.name}"
                    )
                tensors[ref.name] = ref
            if len(tensors) > MAX_TENSORS:
                raise CheckpointError(
                    f"{folder}: more than {MAX_TENSORS:,} tensors, more than any model Cattery converts"
                )
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
        """The tokenizer files there are, each the folder's own (a merge copies them into its output)."""
        return [p for n in TOKENIZER_FILES if (p := own_file(self.folder / n, self.folder, required=False))]

    def close(self) -> None:
        """Nothing stays open between tensors; kept so a Checkpoint is a context manager."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


CHECKED_FILES = ("model.safetensors.index.json", *TOKENIZER_FILES, "README.md")


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files, or one line saying why there are none (pickles are never read)."""
    files: list[Path] = []
    for p in folder.glob("*.safetensors"):
        files.append(p)
        if len(files) > MAX_SHARDS:
            raise CheckpointError(f"{folder}: more than {MAX_SHARDS} safetensors files")
    if not files:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise CheckpointError(
                f"{folder}: only pickled weights ({pickled[0]}): Cattery never unpickles files; "
                "convert them to safetensors first, or download a safetensors version"
            )
        raise CheckpointError(f"{folder}: no .safetensors files")
    return sorted(files)


def _index_files(folder: Path, files: list[Path]) -> set[str] | None:
    """The shard names model.safetensors.index.json lists (None without an index): plain names of files
    beside it, never a path (`../x`, `/x`) that would reach out of the folder."""
    index = folder / "model.safetensors.index.json"
    if own_file(index, folder, required=False) is None:
        return None
    data = read_json(index, folder)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: not a safetensors index (no weight_map object)")
    wanted: set[str] = set()
    for tensor, name in weight_map.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{index}: the file of {tensor[:80]!r} is {type(name).__name__}, not a file name")
        wanted.add(name)
    for name in wanted:
        check_name_text(name, str(index), "shard name", max_len=255)
        if name != Path(name).name or "\\" in name or name in (".", "..") or not name.endswith(".safetensors"):
            raise CheckpointError(f"{index}: {name[:80]!r} is not the name of a .safetensors file beside it")
    have = {f.name for f in files}
    missing = sorted(wanted - have)
    if missing:
        raise CheckpointError(f"{folder}: the index names shards that are missing: {', '.join(missing[:5])}")
    return wanted


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
        from converters.partials import clean_leftovers

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        clean_leftovers(self.folder)  # shards a killed run left behind
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
        from converters.partials import lock, partial_name

        tmp = self.folder / partial_name(self.names[self._shard])
        self._tmp.append(tmp)
        self._file = tmp.open("wb")
        lock(self._file.fileno())  # held until the shard is complete: a later run leaves it alone
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
