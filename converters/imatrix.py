"""Importance matrices made by llama.cpp's `llama-imatrix`, in both of its file formats.

An importance matrix holds, for every weight matrix the tool saw used, the mean of
the squared activations entering each of its columns; llama.cpp's low-bit quantizers
weigh their rounding errors by it. `llama-quantize` reads the file itself and hands
the library plain float arrays; Cattery calls the library, so it reads the file here
the same way (tools/quantize/quantize.cpp's load_imatrix):

- GGUF (what llama-imatrix writes by default now): tensors `NAME.in_sum2` (sums of
  squares, one row per expert) and `NAME.counts` (how many activations each row
  summed); values = in_sum2 / counts, and 1 where a count is 0 (an expert never hit).
- legacy `.dat`: int32 entry count; per entry int32 name length, the name, int32
  ncall, int32 nval, nval float32 (already divided by the token count and multiplied
  by ncall); then optionally int32 chunk count and int32 length + the dataset name.
  values = data / ncall.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import CatteryError


@dataclass
class ImportanceMatrix:
    path: Path
    format: str  # "gguf" or "dat"
    entries: dict[str, np.ndarray] = field(default_factory=dict)  # tensor name → float32 values
    chunks: int | None = None
    datasets: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)


def read_imatrix(path: Path) -> ImportanceMatrix:
    """Either format, told apart by the GGUF magic; one-line errors for anything else."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():
        raise CatteryError(f"{path}: not a regular file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise CatteryError(f"{path}: importance matrix not found") from None
    except IsADirectoryError:
        raise CatteryError(f"{path}: is a folder, not an importance matrix file") from None
    except OSError as exc:
        raise CatteryError(f"{path}: cannot read: {exc.strerror}") from None
    imatrix = _read_gguf(path) if magic == b"GGUF" else _read_dat(path)
    if not imatrix.entries:
        raise CatteryError(f"{path}: the importance matrix has no entries")
    for name, values in imatrix.entries.items():
        if not np.all(np.isfinite(values)):
            raise CatteryError(f"{path}: entry {name} holds values that are not finite numbers")
    return imatrix


def _read_gguf(path: Path) -> ImportanceMatrix:
    """Through Cattery's own GGUF reader (converters/gguf_read.py), which bounds what a hostile header
    can make it allocate; gguf-py's reader builds objects for every array item a header claims."""
    from converters.gguf_read import GGUFFile

    g = GGUFFile.open(path)
    try:
        return _gguf_entries(g, path)
    finally:
        g.close()


def _gguf_entries(g: Any, path: Path) -> ImportanceMatrix:
    import gguf

    kind = g.get("general.type")
    sums: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    for tensor in g.tensors:
        if tensor.name.endswith(".in_sum2"):
            sums[tensor.name.removesuffix(".in_sum2")] = tensor
        elif tensor.name.endswith(".counts"):
            counts[tensor.name.removesuffix(".counts")] = tensor
    if not sums or (kind is not None and kind != "imatrix"):
        what = f"a GGUF of type {str(kind)[:40]!r}" if kind else "a GGUF file without .in_sum2 tensors"
        raise CatteryError(f"{path}: not an importance matrix ({what}); make one with llama.cpp's llama-imatrix")
    out = ImportanceMatrix(path, "gguf")
    for name in sorted(sums):
        if name not in counts:
            raise CatteryError(f"{path}: entry {name} has sums but no counts")
        for t in (sums[name], counts[name]):
            if t.ggml_type not in (int(gguf.GGMLQuantizationType.F32), int(gguf.GGMLQuantizationType.F16)):
                raise CatteryError(f"{path}: entry {t.name} is not stored as F32")
        s = np.asarray(g.f32(sums[name]), dtype=np.float32)
        c = np.asarray(g.f32(counts[name]), dtype=np.float32).reshape(-1)
        n_mat = c.size
        if n_mat == 0 or s.size % n_mat:
            raise CatteryError(f"{path}: entry {name} has {s.size} sums for {n_mat} counts")
        rows = s.reshape(n_mat, -1)
        safe = np.where(c > 0, c, 1.0).astype(np.float32)[:, None]
        with np.errstate(all="ignore"):
            values = np.where(c[:, None] > 0, rows / safe, np.float32(1.0))
        out.entries[name] = np.ascontiguousarray(values.reshape(-1), dtype=np.float32)
    chunks = g.get("imatrix.chunk_count")
    if chunks is not None and (isinstance(chunks, bool) or not isinstance(chunks, int)):
        raise CatteryError(f"{path}: imatrix.chunk_count should be a whole number")
    out.chunks = int(chunks) if chunks is not None else None
    datasets = g.get("imatrix.datasets")
    if isinstance(datasets, list):
        out.datasets = [str(d)[:1000] for d in datasets[:100]]
    elif isinstance(datasets, str):
        out.datasets = [datasets[:1000]]
    return out


MAX_DAT = 1 << 30  # the legacy format of a 405B model's matrix is ~80 MB; an MoE's a few hundred


def _read_dat(path: Path) -> ImportanceMatrix:
    import mmap

    size = path.stat().st_size
    if size > MAX_DAT:
        raise CatteryError(f"{path}: {size:,} bytes, more than an importance matrix can be ({MAX_DAT:,})")
    if size < 4:
        raise CatteryError(f"{path}: not an importance matrix (neither GGUF nor llama.cpp's legacy .dat format)")
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _dat_entries(path, data)


def _dat_entries(path: Path, data: Any) -> ImportanceMatrix:
    pos = 0

    def take(fmt: str, what: str) -> Any:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise CatteryError(f"{path}: not an importance matrix (the file ends inside {what})")
        value = struct.unpack_from(fmt, data, pos)
        pos += size
        return value[0] if len(value) == 1 else value

    n_entries = take("<i", "the header")
    if not 0 < n_entries < 1_000_000:
        raise CatteryError(f"{path}: not an importance matrix (neither GGUF nor llama.cpp's legacy .dat format)")
    out = ImportanceMatrix(path, "dat")
    for i in range(n_entries):
        length = take("<i", f"entry {i + 1}")
        if not 0 < length <= 4096 or pos + length > len(data):
            raise CatteryError(f"{path}: not an importance matrix (entry {i + 1} has a bad name length)")
        name = bytes(data[pos : pos + length]).decode("utf-8", errors="replace")
        pos += length
        ncall, nval = take("<ii", f"entry {name[:80]}")
        if nval < 1 or pos + 4 * nval > len(data):
            raise CatteryError(f"{path}: entry {name[:80]}: {nval} values do not fit in the file")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        out.entries[name] = values / np.float32(ncall) if ncall > 0 else values
    if pos + 4 <= len(data):
        out.chunks = take("<i", "the chunk count")
        if pos + 4 <= len(data):
            length = take("<i", "the dataset name")
            if 0 < length <= min(len(data) - pos, 4096):
                out.datasets = [bytes(data[pos : pos + length]).decode("utf-8", errors="replace")]
    return out
