"""Small GGUF files made in the test run with gguf-py's writer, for the error paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def add_value(writer: object, key: str, value: object) -> None:
    """Add a metadata value with the GGUF type its Python type suggests."""
    w: Any = writer
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    else:
        w.add_array(key, list(value))  # type: ignore[call-overload]


def write_gguf(
    path: Path,
    arch: str = "llama",
    *,
    tensors: dict[str, np.ndarray] | None = None,
    extra: dict[str, object] | None = None,
) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("test model")
    w.add_context_length(2048)
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_head_count(4)
    for key, value in (extra or {}).items():
        add_value(w, key, value)
    for name, array in (tensors or {"token_embd.weight": np.ones((16, 64), dtype=np.float32)}).items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_huge_sparse_gguf(path: Path, n_bytes: int) -> Path:
    """A GGUF whose header describes `n_bytes` of weights; the file is sparse, so it costs no disk."""
    import gguf

    rows = n_bytes // (4096 * 2)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    w.add_block_count(1)
    w.add_embedding_length(4096)
    w.add_head_count(32)
    w.add_tensor_info("token_embd.weight", (rows, 4096), np.dtype(np.float16), rows * 4096 * 2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with path.open("r+b") as f:
        f.truncate(f.seek(0, 2) + rows * 4096 * 2 + 64)
    return path


def copy_gguf(
    src: Path,
    dst: Path,
    *,
    dequantize: bool = False,
    overrides: dict[str, object] | None = None,
    drop: tuple[str, ...] = (),
    split_max_size: int = 0,
) -> Path:
    """A copy of a GGUF model with metadata changed (`overrides`, `drop`), weights as they are
    or dequantized to F32.

    A Q4 model's forward pass quantizes activations to 8 bits, so a change in the last
    bit anywhere (a different batch split, a position offset) can flip a rounding and
    move logits by a whole unit; in F32 such changes stay at float precision. Tests
    that compare two ways of computing the same thing use the dequantized copy.
    """
    import gguf

    overrides = dict(overrides or {})
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch, split_max_size=split_max_size)
    if dequantize:
        overrides["general.file_type"] = int(gguf.LlamaFileType.ALL_F32)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.alignment") or key in drop:
            continue
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        value = overrides.pop(key) if key in overrides else field.contents()
        writer.add_key_value(key, value, main, sub_type=sub)
    for key, value in overrides.items():  # keys the source did not have
        add_value(writer, key, value)
    for tensor in reader.tensors:
        shape = tuple(reversed([int(d) for d in tensor.shape]))
        if dequantize:
            data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            writer.add_tensor(tensor.name, data.reshape(shape))
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def split_copy(src: Path, folder: Path, parts_of: int) -> list[Path]:
    """The model split as gguf-split does it (`NAME-00001-of-0000N.gguf`, `split.*` keys), in
    shards of about `parts_of` bytes; the files, first one first."""
    folder.mkdir(parents=True, exist_ok=True)
    copy_gguf(src, folder / src.name, split_max_size=parts_of)
    return sorted(folder.glob(f"{src.stem}-*-of-*.gguf"))


def dequantized_copy(src: Path, dst: Path) -> Path:
    return copy_gguf(src, dst, dequantize=True)
