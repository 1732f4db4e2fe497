"""Llama tensors between Hugging Face and GGUF: names, the Q/K row order, the stored types.

Names come from gguf-py's tensor map (the one llama.cpp's converter uses). The Q/K
permutation exists because HF's llama applies RoPE to the two halves of each head
(`rotate_half`) while llama.cpp rotates adjacent pairs: converting reorders each head's
rows from [first half, second half] to interleaved pairs, with K grouped by the
number of KV heads. It happens here, during conversion, so merges stay in HF space.

Types follow llama.cpp's converter: 1-D tensors and norms in F32, everything else in
the output type; Q8_0 falls back to F16 for a tensor whose rows are not a multiple of
32 (as the converter does when gguf-py refuses).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from converters.checkpoint import CheckpointError
from converters.llama_layout import HF_GLOBAL, HF_LAYER, required_gguf

# Buffers some checkpoints carry that llama.cpp's converter drops.
SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def name_map(n_layers: int) -> Any:
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)


def gguf_name(hf_name: str, tmap: Any) -> str | None:
    return tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))


def hf_names_by_gguf(n_layers: int) -> dict[str, str]:
    """GGUF name → the HF llama name, for unpacking (each name of the layout table through gguf-py's map)."""
    tmap = name_map(n_layers)
    names = list(HF_GLOBAL) + [f"model.layers.{i}.{n}" for i in range(n_layers) for n in HF_LAYER]
    out = {}
    for hf in names:
        g = gguf_name(hf, tmap)
        if g is None:  # pragma: no cover - gguf-py's map always has the llama names
            raise RuntimeError(f"gguf-py has no GGUF name for {hf}")
        out[g] = hf
    return out


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF → GGUF: each head's rows [half 0 | half 1] become pairs (row i, row i + half)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF → HF, the inverse of `permute`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def file_type(outtype: str) -> int:
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]


def resolve_outtype(outtype: str, source: Any) -> str:
    """`auto` as llama.cpp's converter decides it: the first 2-D tensor stored as BF16 or F16 wins, else F16."""
    if outtype != "auto":
        if outtype not in OUTTYPES:
            raise CheckpointError(f"unknown output type {outtype!r} (one of {', '.join(OUTTYPES)}, auto)")
        return outtype
    for name in source.names():
        ref = source.tensors[name]
        if len(ref.shape) < 2:
            continue
        if ref.dtype == "BF16":
            return "bf16"
        if ref.dtype == "F16":
            return "f16"
    return "f16"


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # in the GGUF
    shape: tuple[int, ...]  # numpy order (the GGUF shape reversed)
    qtype: int  # gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]  # float32 data, permuted where needed
    source: str | None = None  # the HF name, None for generated tensors (rope_freqs)
    # For a safetensors source: its stored words (F32, F16 or BF16 as uint16), permuted; they are
    # widened to float32 a chunk of rows at a time instead of the whole tensor at once.
    load_stored: Callable[[], tuple[np.ndarray, str]] | None = None

    @property
    def nbytes(self) -> int:
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(self.qtype)]
        n = 1
        for d in self.shape[:-1]:
            n *= d
        return n * (self.shape[-1] // block) * size

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def data(self) -> np.ndarray:
        """The bytes to write: the tensor in its GGUF type, byte for byte as gguf-py's quantizers make it.

        Faster than handing gguf-py the whole float32 tensor: words already in the GGUF
        type are written as they are, and otherwise rows are widened and converted a chunk
        at a time (rows are independent in every type here), which also keeps the
        temporaries small.
        """
        import gguf

        Q = gguf.GGMLQuantizationType
        qtype = Q(self.qtype)
        if self.load_stored is not None:
            stored, dtype = self.load_stored()
        else:
            stored, dtype = np.asarray(self.load(), dtype=np.float32), "F32"
        if dtype == qtype.name:
            return stored
        rows = stored.reshape(-1, stored.shape[-1]) if stored.ndim else stored.reshape(1, 1)
        out = np.empty((rows.shape[0], self.nbytes // rows.shape[0]), dtype=np.uint8)
        step = max(1, CHUNK // rows.shape[1])

        def convert(start: int) -> None:
            chunk = rows[start : start + step]
            f32 = widen_bf16(chunk) if dtype == "BF16" else chunk.astype(np.float32, copy=False)
            if qtype == Q.BF16:
                converted = to_bf16(f32)
            elif qtype == Q.F16:
                converted = to_f16(f32)
            else:
                converted = gguf.quants.quantize(f32, qtype)
            out[start : start + step] = converted.view(np.uint8).reshape(len(chunk), -1)

        starts = range(0, rows.shape[0], step)
        if len(starts) == 1:
            convert(0)
        else:  # numpy's casts and arithmetic release the GIL: chunks convert on every core
            list(_pool().map(convert, starts))
        return out


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="gguf-convert")
    return _POOL


CHUNK = 1 << 18  # values per conversion step: 1 MB arrays, small enough to stay in the CPU's caches


def to_bf16(data: np.ndarray) -> np.ndarray:
    """float32 → BF16 words exactly as gguf-py (and ggml's fp32→bf16) rounds: to nearest even, NaNs made quiet."""
    flat = np.ascontiguousarray(data, dtype=np.float32).reshape(-1).view(np.uint32)
    out = np.empty(flat.size, dtype=np.uint16)
    for start in range(0, flat.size, CHUNK):
        n = flat[start : start + CHUNK]
        words = ((n + (np.uint32(0x7FFF) + ((n >> 16) & 1))) >> 16).astype(np.uint16)
        nan = (n & 0x7FFFFFFF) > 0x7F800000
        if nan.any():
            words[nan] = (((n[nan] & 0xFFFF0000) | (64 << 16)) >> 16).astype(np.uint16)
        out[start : start + CHUNK] = words
    return out.reshape(data.shape)


def to_f16(data: np.ndarray) -> np.ndarray:
    """float32 → F16 words, the same as numpy's cast (round to nearest even) at twice its speed.

    Normal values are rounded at bit 13 and rebiased; values below F16's normal range are
    rounded by the float32 addition of 0.5 (which puts F16's subnormal step in the last
    place); anything from 65520 up, infinities and NaNs go through numpy's own cast.
    """
    n = np.ascontiguousarray(data, dtype=np.float32).view(np.uint32)
    a = n & np.uint32(0x7FFFFFFF)
    t = a >> 13  # in place from here: every temporary costs page faults
    t &= np.uint32(1)
    t += a
    t += np.uint32(0xFFF)
    t >>= 13
    t -= np.uint32(112 << 10)
    out = t.astype(np.uint16)
    small = a < np.uint32(0x38800000)
    if small.any():
        rounded = a[small].view(np.float32) + np.float32(0.5)
        out[small] = (rounded.view(np.uint32) - np.uint32(0x3F000000)).astype(np.uint16)
    big = a >= np.uint32(0x477FF000)
    if big.any():
        with np.errstate(over="ignore", invalid="ignore"):
            out[big] = np.abs(data[big]).astype(np.float16).view(np.uint16)
    np.right_shift(n, 16, out=t)
    t &= np.uint32(0x8000)
    out |= t.astype(np.uint16)
    return out.view(np.float16)


def widen_bf16(words: np.ndarray) -> np.ndarray:
    """BF16 words → float32: each word becomes the high half of a float32 whose low half is zero."""
    out = np.zeros(words.size * 2, dtype=np.uint16)
    out[1::2] = words.reshape(-1)  # little-endian: the high half is the second word
    return out.view(np.float32).reshape(words.shape)


def tensor_type(gguf_tensor: str, shape: tuple[int, ...], outtype: str) -> int:
    import gguf

    Q = gguf.GGMLQuantizationType
    if len(shape) <= 1 or gguf_tensor.endswith("_norm.weight") or not gguf_tensor.endswith(".weight"):
        return int(Q.F32)
    qtype = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[outtype]
    if qtype == Q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        return int(Q.F16)
    return int(qtype)


_LAYER = re.compile(r"\.(\d+)\.")


def plan_tensors(source: Any, hp: dict[str, Any], outtype: str, where: str) -> list[PlannedTensor]:
    """Every tensor of the GGUF in llama.cpp's converter's order (the source's), with type and loader."""
    n_layers, n_head, n_kv = hp["num_hidden_layers"], hp["num_attention_heads"], hp["num_key_value_heads"]
    tmap = name_map(n_layers)
    tied = bool(hp.get("tie_word_embeddings"))
    plan: list[PlannedTensor] = []
    seen: dict[str, str] = {}
    for hf in source.names():
        if hf.endswith(SKIPPED_SUFFIXES):
            continue
        if tied and hf == "lm_head.weight":
            continue  # tied: HF reuses the embeddings whatever the file holds; so does llama.cpp without output.weight
        if "block_sparse_moe" in hf or ".experts." in hf:
            raise CheckpointError(f"{where}: {hf}: mixture-of-experts checkpoints are not supported")
        target = gguf_name(hf, tmap)
        if target is None:
            raise CheckpointError(f"{where}: tensor {hf} has no GGUF name in a llama model")
        m = _LAYER.search(hf)
        if m and int(m.group(1)) >= n_layers:
            raise CheckpointError(f"{where}: tensor {hf} is past the {n_layers} layers config.json gives")
        if target in seen:
            raise CheckpointError(f"{where}: tensors {seen[target]} and {hf} both map to {target}")
        seen[target] = hf
        shape = tuple(int(d) for d in source.tensors[hf].shape)
        heads = n_head if hf.endswith(("q_proj.weight", "q_proj.bias")) else None
        if hf.endswith(("k_proj.weight", "k_proj.bias")):
            heads = n_kv
        if heads is not None and shape[0] % (2 * heads) != 0:
            raise CheckpointError(f"{where}: {hf} has {shape[0]} rows, not a whole number of {heads} heads")
        qtype = tensor_type(target, shape, outtype)
        stored = _stored_loader(source, hf, heads, qtype)
        plan.append(PlannedTensor(target, shape, qtype, _loader(source, hf, heads), source=hf, load_stored=stored))
    _check_complete(seen, n_layers, tied, where)
    return plan


def _loader(source: Any, hf: str, heads: int | None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        data = read_f32(source, hf)
        return permute(data, heads) if heads is not None else data

    return load


def _stored_loader(source: Any, hf: str, heads: int | None, qtype: int) -> Callable[[], tuple[np.ndarray, str]] | None:
    import gguf

    from converters.checkpoint import Checkpoint

    if not isinstance(source, Checkpoint) or source.tensors[hf].dtype not in ("F32", "F16", "BF16"):
        return None
    dtype = source.tensors[hf].dtype
    passthrough = dtype == "BF16" and gguf.GGMLQuantizationType(qtype).name == "BF16"

    def load() -> tuple[np.ndarray, str]:
        words = _read_stored(source, hf)
        if passthrough:  # NaNs made quiet, as the rounding of their float32 values would
            nan = (words & 0x7FFF) > 0x7F80
            if nan.any():
                words = np.where(nan, words | 0x0040, words).astype(np.uint16)
        return (permute(words, heads) if heads is not None else words), dtype

    return load


def _read_stored(source: Any, name: str) -> np.ndarray:
    from converters.checkpoint import DTYPES

    ref = source.tensors[name]
    dtype = DTYPES[ref.dtype]
    count = ref.nbytes // dtype.itemsize
    data = np.fromfile(ref.file, dtype=dtype, count=count, offset=ref.offset)
    if data.size != count:
        raise CheckpointError(f"{ref.file}: truncated inside tensor {name}")
    return data.reshape(ref.shape)


def read_f32(source: Any, name: str) -> np.ndarray:
    """A tensor as float32, read with plain file reads where the source is a safetensors checkpoint.

    Reading through a memory map would leave every page read mapped into the process
    (counted in its RSS) until the whole model is done; a read into a fresh buffer is
    freed as soon as the tensor is written.
    """
    from converters.checkpoint import Checkpoint

    if not isinstance(source, Checkpoint):
        return np.asarray(source.f32(name), dtype=np.float32)
    data = _read_stored(source, name)
    if source.tensors[name].dtype == "BF16":
        return widen_bf16(data)
    return data.astype(np.float32, copy=False)


def _check_complete(seen: dict[str, str], n_layers: int, tied: bool, where: str) -> None:
    missing = [n for n in required_gguf(n_layers) if n not in seen]
    if missing:
        first = hf_names_by_gguf(n_layers)[missing[0]]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{where}: tensor {first} is missing{more}")
    if "output.weight" not in seen and not tied:
        # llama.cpp falls back to the embeddings; HF would have refused an untied model without lm_head.
        raise CheckpointError(f"{where}: no lm_head.weight, and config.json does not tie the embeddings")
