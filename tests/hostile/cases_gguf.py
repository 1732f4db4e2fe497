"""Hostile GGUF headers, built byte by byte, and the worst of them as zero-argument cases.

`raw_gguf` writes any header at all, lies included (counts, lengths, types, offsets),
which gguf-py's writer refuses to. `WORST_CASES` are the inputs that used to hang the
header reader or eat memory without bound (an array count of 2^63, 200,000 nested
arrays, a billion metadata entries, nested short arrays that multiply, a string the
size of the disk...); bench/hostile.py times each and measures its peak memory, and
tests/hostile/test_hostile_gguf.py runs them under tests.hostile.bounds's bounds.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

# GGUF value type codes
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
F32_TENSOR = 0  # ggml type F32


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def s(text: str | bytes, length: int | None = None) -> bytes:
    """A GGUF string: its length (or a lie about it) and its bytes."""
    data = text.encode() if isinstance(text, str) else text
    return u64(len(data) if length is None else length) + data


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return s(key) + u32(vtype) + payload


def arr(item_type: int, count: int, items: bytes = b"") -> bytes:
    """An array value's payload: its item type, its count (true or not) and the items."""
    return u32(item_type) + u64(count) + items


def tensor(name: str | bytes, shape: tuple[int, ...], ggml_type: int = F32_TENSOR, offset: int = 0) -> bytes:
    return s(name) + u32(len(shape)) + b"".join(u64(d) for d in shape) + u32(ggml_type) + u64(offset)


def llama_kvs(arch: str = "llama", **override: bytes) -> list[bytes]:
    """A minimal llama header's metadata; `override` replaces or adds entries by key (dots as __)."""
    base: dict[str, bytes] = {
        "general.architecture": kv("general.architecture", STRING, s(arch)),
        "general.name": kv("general.name", STRING, s("hostile test")),
        f"{arch}.context_length": kv(f"{arch}.context_length", U32, u32(2048)),
        f"{arch}.block_count": kv(f"{arch}.block_count", U32, u32(2)),
        f"{arch}.embedding_length": kv(f"{arch}.embedding_length", U32, u32(64)),
        f"{arch}.attention.head_count": kv(f"{arch}.attention.head_count", U32, u32(4)),
    }
    for key, entry in override.items():
        base[key.replace("__", ".")] = entry
    return [v for v in base.values() if v]


def raw_gguf(
    kvs: list[bytes],
    tensors: list[bytes] | None = None,
    *,
    data: bytes = b"",
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    align: int = 32,
) -> bytes:
    """A whole GGUF file: header, metadata, tensor directory, padding, then `data`."""
    tensors = [] if tensors is None else tensors
    head = (
        b"GGUF"
        + u32(version)
        + u64(len(tensors) if n_tensors is None else n_tensors)
        + u64(len(kvs) if n_kv is None else n_kv)
    )
    body = head + b"".join(kvs) + b"".join(tensors)
    if tensors:
        body += b"\0" * (-len(body) % align)
    return body + data


def small_model(**override: bytes) -> bytes:
    """A valid little llama header with one F32 tensor of 16 × 64 and its data."""
    t = tensor("token_embd.weight", (64, 16))
    return raw_gguf(llama_kvs(**override), [t], data=b"\0" * (64 * 16 * 4))


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# -- the worst cases ---------------------------------------------------------------------------


def _info(data: bytes | Path) -> object:
    from app.engine.metadata import read_model_info

    if isinstance(data, Path):
        return read_model_info(data)
    with tempfile.TemporaryDirectory() as folder:
        return read_model_info(write(Path(folder), "hostile.gguf", data))


def array_count_2_63() -> object:
    """A string array claiming 2^63 items: the old reader skipped them one by one, forever."""
    return _info(raw_gguf(llama_kvs(tokenizer__ggml__tokens=kv("tokenizer.ggml.tokens", ARRAY, arr(STRING, 1 << 63)))))


def nested_arrays_200k() -> object:
    """200,000 arrays, each holding the next: the old reader recursed into RecursionError."""
    nested = arr(ARRAY, 1) * 200_000 + arr(U8, 0)
    return _info(raw_gguf(llama_kvs(deep=kv("deep", ARRAY, nested))))


def billion_kv_pairs() -> object:
    """A header claiming 2^30 metadata entries, with 2 MB of real ones behind the claim."""
    entry = kv("k", U8, b"\1")
    return _info(raw_gguf([entry] * 150_000, n_kv=1 << 30))


def many_real_kv_pairs() -> object:
    """1,000,000 genuine one-byte entries (20 MB): the old reader kept every one in a dict."""
    entries = b"".join(kv(f"k{i}", U8, b"\1") for i in range(1_000_000))
    return _info(raw_gguf([entries], n_kv=1_000_000))


def multiplying_short_arrays() -> object:
    """Short arrays of short arrays (64 of 64 of 64 of 64 bytes): 16.7M values from 20 MB."""
    leaf = arr(U8, 64, b"\1" * 64)
    level = leaf
    for _ in range(3):
        level = arr(ARRAY, 64, level * 64)
    return _info(raw_gguf(llama_kvs(bomb=kv("bomb", ARRAY, level))))


def string_of_a_gigabyte() -> object:
    """A string whose length says 1 GiB in a 1 KB file: the old reader allocated the 1 GiB."""
    return _info(raw_gguf(llama_kvs(general__name=kv("general.name", STRING, s(b"x" * 100, length=(1 << 30) - 1)))))


def string_spray_100mb() -> object:
    """A hundred 1 MB strings (100 MB of metadata, a heap spray): read whole by the old reader."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spray.gguf"
        big = b"A" * (1 << 20)
        with path.open("wb") as f:
            f.write(raw_gguf(llama_kvs(), n_kv=6 + 100))
            for i in range(100):
                f.write(kv(f"spray.{i}", STRING, s(big)))
        return _info(path)


def vocab_of_empty_strings() -> object:
    """A vocabulary of 8M empty strings (64 MB): the old reader walked each one (~15 s)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vocab.gguf"
        count = 1 << 23
        with path.open("wb") as f:
            f.write(raw_gguf(llama_kvs(tokenizer__ggml__tokens=kv("tokenizer.ggml.tokens", ARRAY, arr(STRING, count)))))
            zeros = u64(0) * (1 << 16)
            for _ in range(count >> 16):
                f.write(zeros)
        return _info(path)


def block_count_4096() -> object:
    """block_count past llama.cpp's 512-layer arrays (an out-of-bounds write inside llama.cpp)."""
    return _info(small_model(llama__block_count=kv("llama.block_count", U32, u32(4096))))


WORST_CASES: list[tuple[str, Callable[[], object]]] = [
    ("array count 2^63", array_count_2_63),
    ("200,000 nested arrays", nested_arrays_200k),
    ("2^30 metadata entries claimed", billion_kv_pairs),
    ("1M real metadata entries", many_real_kv_pairs),
    ("short arrays multiplying to 16.7M values", multiplying_short_arrays),
    ("a 1 GiB string length", string_of_a_gigabyte),
    ("100 MB of metadata strings", string_spray_100mb),
    ("8M empty vocabulary strings", vocab_of_empty_strings),
    ("block_count 4096", block_count_4096),
]
