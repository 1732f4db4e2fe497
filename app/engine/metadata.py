"""What a GGUF file says about its model, read with gguf-py before llama.cpp ever sees it.

Reading the header first lets Cattery refuse a file that is not GGUF, check memory
and context before loading, and show model details without loading weights.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from app.engine.gguf_header import ArrayRef, GGUFFormatError, GGUFHeader, read_array_item, read_header
from app.errors import ModelFileError


@dataclass
class ModelInfo:
    path: Path
    file_size: int
    architecture: str
    name: str | None
    size_label: str | None
    file_type: str | None  # e.g. Q4_1, Q4_K_M, F16
    parameter_count: int
    tensor_bytes: int
    context_length: int | None
    block_count: int | None
    embedding_length: int | None
    feed_forward_length: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None
    value_length: int | None
    rope_freq_base: float | None
    rope_dimension_count: int | None
    rope_scaling_type: str | None
    rope_scaling_factor: float | None
    rope_original_context: int | None
    vocab_size: int | None
    chat_template: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    eot_token_id: int | None
    bos_token: str | None
    eos_token: str | None
    add_bos_token: bool | None
    add_eos_token: bool | None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def head_dim_k(self) -> int | None:
        if self.key_length:
            return self.key_length
        if self.embedding_length and self.head_count:
            return self.embedding_length // self.head_count
        return None

    @property
    def head_dim_v(self) -> int | None:
        return self.value_length or self.head_dim_k

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out["path"] = str(self.path)
        return out


def check_gguf_magic(path: Path) -> None:
    """One clear line for the commonest mistakes: no file, a folder, a file that is not GGUF."""
    if not path.exists():
        raise ModelFileError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a GGUF file")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror}") from None
    if head != b"GGUF":
        hint = ""
        if path.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            hint = " (a checkpoint: convert it with `cattery convert`)"
        elif head[:2] == b"PK":
            hint = " (a zip archive)"
        raise ModelFileError(f"{path}: not a GGUF file{hint}")


def _largest(value: Any) -> Any:
    """Per-layer arrays (e.g. head_count_kv in some models) are summarised by their largest value."""
    if isinstance(value, list):
        return max(value) if value else None
    return value


def _file_type_name(header: GGUFHeader) -> str | None:
    import gguf

    raw = header.get("general.file_type")
    if raw is not None:
        try:
            return gguf.LlamaFileType(int(raw)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    # No file type: name it after the commonest type among the 2-D weights.
    counts = Counter(t.type_name for t in header.tensors if len(t.shape) >= 2)
    return counts.most_common(1)[0][0] if counts else None


def read_model_info(path: Path) -> ModelInfo:
    """Parse the GGUF header; raise `ModelFileError` with one line for anything unreadable."""
    check_gguf_magic(path)
    try:
        with path.open("rb") as f:
            return model_info_from(f, path, path.stat().st_size)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror}") from None


def model_info_from(f: BinaryIO, path: Path, size: int) -> ModelInfo:
    """A model's numbers from any binary file: a local file, or a remote one read by ranges.

    Only the header is read (and single vocabulary entries for the BOS/EOS texts).
    """
    try:
        header = read_header(f)
        tokens = header.get("tokenizer.ggml.tokens")

        def token_text(token_id: Any) -> str | None:
            if token_id is None or tokens is None:
                return None
            try:
                if isinstance(tokens, ArrayRef):
                    return str(read_array_item(f, tokens, int(token_id)))
                return str(tokens[int(token_id)])
            except (IndexError, GGUFFormatError):
                return None

        bos = header.get("tokenizer.ggml.bos_token_id")
        eos = header.get("tokenizer.ggml.eos_token_id")
        bos_text, eos_text = token_text(bos), token_text(eos)
    except GGUFFormatError as exc:
        raise ModelFileError(f"{path}: {exc}") from None

    split_count = int(header.get("split.count") or 1)
    if header.data_end > size and split_count <= 1:
        raise ModelFileError(
            f"{path}: truncated: the header promises {header.data_end} bytes, the file has {size} "
            "(an interrupted download?)"
        )
    arch = str(header.get("general.architecture") or "unknown")

    def a(key: str) -> Any:
        return _largest(header.get(f"{arch}.{key}"))

    add_bos = header.get("tokenizer.ggml.add_bos_token")
    add_eos = header.get("tokenizer.ggml.add_eos_token")
    return ModelInfo(
        path=path,
        file_size=size,
        architecture=arch,
        name=header.get("general.name"),
        size_label=header.get("general.size_label"),
        file_type=_file_type_name(header),
        parameter_count=sum(t.n_elements for t in header.tensors),
        tensor_bytes=sum(t.n_bytes for t in header.tensors),
        context_length=a("context_length"),
        block_count=a("block_count"),
        embedding_length=a("embedding_length"),
        feed_forward_length=a("feed_forward_length"),
        head_count=a("attention.head_count"),
        head_count_kv=a("attention.head_count_kv") or a("attention.head_count"),
        key_length=a("attention.key_length"),
        value_length=a("attention.value_length"),
        rope_freq_base=a("rope.freq_base"),
        rope_dimension_count=a("rope.dimension_count"),
        rope_scaling_type=a("rope.scaling.type"),
        rope_scaling_factor=a("rope.scaling.factor"),
        rope_original_context=a("rope.scaling.original_context_length"),
        vocab_size=len(tokens) if tokens is not None else None,
        chat_template=header.get("tokenizer.chat_template"),
        bos_token_id=bos,
        eos_token_id=eos,
        eot_token_id=header.get("tokenizer.ggml.eot_token_id"),
        bos_token=bos_text,
        eos_token=eos_text,
        add_bos_token=None if add_bos is None else bool(add_bos),
        add_eos_token=None if add_eos is None else bool(add_eos),
    )
