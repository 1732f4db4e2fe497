"""KV-cache snapshots: what a context's sequence state is valid for, and its file on disk.

A saved KV cache is only worth anything on the very same model file, context size, KV
cache types, RoPE settings, flash-attention choice and llama.cpp build: on anything else
llama.cpp would either refuse it or, worse, take it and produce garbage. So every state
carries a `SnapshotKey`, and a file whose key differs is refused with one line naming
what differs (`SnapshotMismatch`).

The file is outside data the next time it is read (truncated by a crash or a full disk,
flipped bits, a file from another machine, a crafted one), so `read_snapshot` checks
the header's sizes against the file's real size and a hard cap before reading anything
big, and a SHA-256 over the tokens and the state before handing either to llama.cpp.

This module is pure Python and file I/O: no llama.cpp call happens here, so the engine
thread is never held up by a disk.

File layout (little-endian):
    8 bytes  MAGIC
    u32      FORMAT_VERSION
    u32      header length H (at most MAX_HEADER)
    H bytes  JSON: {"key": {...}, "n_tokens": N, "data_len": D, "sha256": hex}
    N * 4    the tokens, int32
    D        llama.cpp's sequence state (llama_state_seq_get_data)
The file is exactly 16 + H + 4N + D bytes long; anything else is damage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import sys
import threading
from array import array
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from app.atomic import write_parts_atomic
from app.errors import CatteryError

MAGIC = b"CATKVSN\x00"
FORMAT_VERSION = 1
MAX_HEADER = 64 * 1024  # a key and three numbers: anything bigger is not ours
MAX_TOKENS = 1 << 24  # no context is this big; bounds the token array before n_ctx is known
_PREFIX = struct.Struct("<8sII")
TEMP_SUFFIX = ".tmp"  # a save in progress (or killed, app/atomic.py names it): never read as a snapshot


class SnapshotMismatch(CatteryError):
    """The snapshot is sound but was made for another model, context or build: unusable here."""


class SnapshotDamaged(CatteryError):
    """The snapshot file is truncated, corrupt, too big or not a snapshot at all."""


# SnapshotKey field → how a mismatch is said to a person.
_LABELS = {
    "model_id": "another model file",
    "n_ctx": "another context size",
    "type_k": "another K cache type",
    "type_v": "another V cache type",
    "rope_freq_base": "another RoPE frequency base",
    "rope_freq_scale": "another RoPE scale",
    "flash_attn": "another flash-attention setting",
    "build": "another llama.cpp build",
    "seq_version": "another llama.cpp state format",
}


@dataclass(frozen=True)
class SnapshotKey:
    """Everything a KV state depends on; two states are interchangeable only if keys are equal.

    `model_id` is the model file's identity (see `model_identity`), `build` the llama.cpp
    library's (its version, system info and library file), `seq_version` llama.cpp's
    sequence-state format. RoPE values are those the context was created with (0 means
    "the model's own", which `model_id` pins).
    """

    model_id: str
    n_ctx: int
    type_k: str
    type_v: str
    rope_freq_base: float
    rope_freq_scale: float
    flash_attn: str
    build: str
    seq_version: int

    def describe(self) -> str:
        """One line for messages and `chats list`: the settings that matter to a person."""
        scale = f", rope x{1 / self.rope_freq_scale:g}" if self.rope_freq_scale not in (0.0, 1.0) else ""
        base = f", rope base {self.rope_freq_base:g}" if self.rope_freq_base else ""
        return f"ctx {self.n_ctx}, KV {self.type_k}/{self.type_v}, flash-attn {self.flash_attn}{base}{scale}"

    def difference(self, other: SnapshotKey) -> str | None:
        """Why a state made under `other` cannot be used under this key, or None if it can."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine != theirs:
                label = _LABELS.get(f.name, f.name)
                if f.name in ("model_id", "build"):
                    return f"made with {label}"
                return f"made with {label} ({theirs}, now {mine})"
        return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> SnapshotKey:
        """A key from a file's header; raises SnapshotDamaged for anything not exactly a key."""
        types: dict[str, tuple[type, ...]] = {
            "model_id": (str,),
            "n_ctx": (int,),
            "type_k": (str,),
            "type_v": (str,),
            "rope_freq_base": (int, float),
            "rope_freq_scale": (int, float),
            "flash_attn": (str,),
            "build": (str,),
            "seq_version": (int,),
        }
        if not isinstance(value, dict) or set(value) != set(types):
            raise SnapshotDamaged("the snapshot's key is not what Cattery writes")
        out: dict[str, Any] = {}
        for name, allowed in types.items():
            v = value[name]
            if isinstance(v, bool) or not isinstance(v, allowed) or (isinstance(v, str) and len(v) > 4096):
                raise SnapshotDamaged(f"the snapshot's key has a bad {name}")
            out[name] = float(v) if float in allowed else v
        return cls(**out)


@dataclass
class KVState:
    """One sequence's KV cache: the tokens it holds, in order, and llama.cpp's bytes for it.

    `data` may be a bytearray: the engine fills one in place to save a copy of a state
    that can be hundreds of MB. Treat it as read-only.
    """

    key: SnapshotKey
    tokens: list[int]
    data: bytes | bytearray = field(repr=False)

    @property
    def nbytes(self) -> int:
        """What keeping the state costs: its data plus the token array as the file holds it."""
        return len(self.data) + 4 * len(self.tokens)


# -- identities ------------------------------------------------------------------------

_IDENTITY_SPAN = 1 << 20
_identity_cache: dict[tuple[str, int, int], str] = {}
_identity_lock = threading.Lock()


def model_identity(path: Path) -> str:
    """size + mtime_ns + SHA-256 of the first and last MiB of the model file.

    Hashing a 40 GB model would take minutes; the header (names, shapes, metadata) and the
    last tensors change with any re-quantization or conversion, and size + mtime catch a
    file replaced in place. Cached per path, size and mtime, so it is computed once per
    model version. Copying a model (new mtime) makes its snapshots stale: erring on the
    side of re-evaluating.
    """
    st = os.stat(path)
    cache_key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    with _identity_lock:
        cached = _identity_cache.get(cache_key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_IDENTITY_SPAN))
        if st.st_size > _IDENTITY_SPAN:
            f.seek(max(_IDENTITY_SPAN, st.st_size - _IDENTITY_SPAN))
            h.update(f.read(_IDENTITY_SPAN))
    ident = f"{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()}"
    with _identity_lock:
        _identity_cache[cache_key] = ident
    return ident


def build_identity(version: str, system_info: str, library: Path | None) -> str:
    """The llama.cpp build: the binding's version, what llama.cpp says it was built with, and
    the library file's size and mtime (a rebuild from the same version with other flags)."""
    lib = ""
    if library is not None:
        with contextlib.suppress(OSError):
            st = os.stat(library)
            lib = f"{st.st_size}:{st.st_mtime_ns}"
    digest = hashlib.sha256(f"{version}\n{system_info}\n{lib}".encode()).hexdigest()[:16]
    return f"{version}+{digest}"


# -- the file --------------------------------------------------------------------------


def _token_bytes(tokens: list[int]) -> bytes:
    arr = array("i", tokens)
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tobytes()


def _digest(token_bytes: bytes, data: bytes | bytearray | memoryview) -> str:
    h = hashlib.sha256()
    h.update(token_bytes)
    h.update(data)
    return h.hexdigest()


def write_snapshot(path: Path, state: KVState) -> int:
    """Write `state` to `path` atomically; returns the bytes written.

    The file is written under a temporary name in the same folder, flushed and fsync'd,
    then renamed over `path`, and the folder fsync'd: a crash or kill at any moment
    leaves the previous snapshot or none under `path`, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens = _token_bytes(state.tokens)
    header = json.dumps(
        {
            "key": state.key.to_json(),
            "n_tokens": len(state.tokens),
            "data_len": len(state.data),
            "sha256": _digest(tokens, state.data),
        },
        separators=(",", ":"),
    ).encode("utf-8")
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header))
    return write_parts_atomic(path, [prefix, header, tokens, state.data], private=True)


def _read_exact(f: Any, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise SnapshotDamaged(f"the snapshot is truncated ({what})")
    return data


def read_header(path: Path, *, max_bytes: int) -> tuple[SnapshotKey, int, int, str, int]:
    """(key, n_tokens, data_len, sha256, header end offset) from a snapshot file, all checked
    against the file's size and `max_bytes`; reads at most 16 + MAX_HEADER bytes."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return _parse_header(f, size, max_bytes)
    except OSError as exc:
        raise SnapshotDamaged(f"the snapshot cannot be read: {exc.strerror or type(exc).__name__}") from None


def _parse_header(f: Any, size: int, max_bytes: int) -> tuple[SnapshotKey, int, int, str, int]:
    if size > max_bytes:
        raise SnapshotDamaged(f"the snapshot is {size} bytes, over the limit of {max_bytes}")
    magic, version, header_len = _PREFIX.unpack(_read_exact(f, _PREFIX.size, "no header"))
    if magic != MAGIC:
        raise SnapshotDamaged("not a Cattery snapshot (bad magic)")
    if version != FORMAT_VERSION:
        raise SnapshotMismatch(f"snapshot format {version}, this Cattery reads {FORMAT_VERSION}")
    if header_len > MAX_HEADER or _PREFIX.size + header_len > size:
        raise SnapshotDamaged(f"the snapshot's header length {header_len} does not fit the file")
    try:
        header = json.loads(_read_exact(f, header_len, "header").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SnapshotDamaged("the snapshot's header is not valid JSON") from None
    if not isinstance(header, dict):
        raise SnapshotDamaged("the snapshot's header is not an object")
    key = SnapshotKey.from_json(header.get("key"))
    n_tokens, data_len, digest = header.get("n_tokens"), header.get("data_len"), header.get("sha256")
    for name, v in (("n_tokens", n_tokens), ("data_len", data_len)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise SnapshotDamaged(f"the snapshot's {name} is not a count")
    assert isinstance(n_tokens, int) and isinstance(data_len, int)
    if not isinstance(digest, str) or len(digest) != 64:
        raise SnapshotDamaged("the snapshot's checksum is missing")
    if n_tokens > MAX_TOKENS or n_tokens > key.n_ctx:
        raise SnapshotDamaged(f"the snapshot claims {n_tokens} tokens in a context of {key.n_ctx}")
    end = _PREFIX.size + header_len
    if end + 4 * n_tokens + data_len != size:
        raise SnapshotDamaged(
            f"the snapshot's sizes do not add up ({n_tokens} tokens + {data_len} bytes of state, file {size} bytes)"
        )
    return key, n_tokens, data_len, digest, end


def read_snapshot(path: Path, key: SnapshotKey, *, max_bytes: int) -> KVState:
    """The state in `path`, if it was made under `key` and is intact.

    Raises SnapshotMismatch (one line saying what differs) before reading the body, and
    SnapshotDamaged for a truncated, corrupt or oversized file. Memory used is bounded by
    `max_bytes` (the file is refused before it is read if it is bigger).
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            theirs, n_tokens, data_len, digest, _end = _parse_header(f, size, max_bytes)
            why = key.difference(theirs)
            if why is not None:
                raise SnapshotMismatch(f"the snapshot was {why}")
            token_bytes = _read_exact(f, 4 * n_tokens, "tokens")
            data = bytearray(data_len)
            if f.readinto(data) != data_len:
                raise SnapshotDamaged("the snapshot is truncated (state)")
    except OSError as exc:
        raise SnapshotDamaged(f"the snapshot cannot be read: {exc.strerror or type(exc).__name__}") from None
    if _digest(token_bytes, data) != digest:
        raise SnapshotDamaged("the snapshot's checksum does not match (the file is corrupt)")
    arr = array("i")
    arr.frombytes(token_bytes)
    if sys.byteorder != "little":
        arr.byteswap()
    return KVState(key=theirs, tokens=arr.tolist(), data=data)
