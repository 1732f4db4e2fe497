"""What a GGUF file says about its model, read before llama.cpp ever sees it.

Reading the header first lets Cattery refuse a file that is not GGUF, check memory
and context before loading, and show model details without loading weights. A model
file may come from anyone: every value is checked here for type and range (through
`gguf_fields.Fields`), and the values llama.cpp trusts blindly are checked too, so that
a hostile header is one line from Cattery rather than a crash inside llama.cpp.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from app.engine.gguf_fields import U32_MAX, Fields
from app.engine.gguf_header import (
    FLOAT32,
    INT32,
    INTEGER_TYPES,
    ArrayRef,
    GGUFHeader,
    quoted,
    read_array_item,
    read_header,
)
from app.errors import ModelFileError

# llama.cpp's fixed sizes (src/llama-hparams.h, llama-hparams.cpp): past them it writes out of
# bounds (LLAMA_MAX_LAYERS, in set_swa_pattern) or aborts (GGML_ASSERT on the experts).
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 512
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")  # llama_rope_scaling_type_from_string
# Ranges for the numbers Cattery computes with (memory estimates, context limits): each far
# beyond any real model (the largest today: embedding 16k-25k, 128 heads, head dim 256-576,
# RoPE base 1e8, scaling factor 64), near enough that no product of them overflows a float.
MAX_EMBEDDING = 1 << 20
MAX_FEED_FORWARD = 1 << 22
MAX_HEADS = 1 << 16
MAX_HEAD_DIM = 1 << 16
MIN_ROPE_BASE, MAX_ROPE_BASE = 1e-3, 1e15
MIN_ROPE_FACTOR, MAX_ROPE_FACTOR = 1 / 1024, 65536.0  # 0 means "no scaling" (llama.cpp)
MAX_LABEL = 200  # characters of a name shown (general.name, size_label)
MAX_ARCH = 64


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
    # values the file got wrong in a way llama.cpp lets go (an out-of-vocabulary BOS id, a
    # chat template that is not text), each one line for the user
    warnings: list[str] = field(default_factory=list, repr=False)

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


def template_info(
    name: str, chat_template: str | None, bos_token: str | None = None, eos_token: str | None = None
) -> ModelInfo:
    """What a chat needs of a model it has no GGUF of (one served by a remote engine): its name, for
    guessing a format, and the chat template with its BOS/EOS texts, as the server or the model's
    tokenizer_config.json says them. Everything a file would measure is unknown."""
    return ModelInfo(
        path=Path(Path(name).name or "remote"),
        file_size=0,
        architecture="?",
        name=Path(name).name.removesuffix(".gguf") or None,
        size_label=None,
        file_type=None,
        parameter_count=0,
        tensor_bytes=0,
        context_length=None,
        block_count=None,
        embedding_length=None,
        feed_forward_length=None,
        head_count=None,
        head_count_kv=None,
        key_length=None,
        value_length=None,
        rope_freq_base=None,
        rope_dimension_count=None,
        rope_scaling_type=None,
        rope_scaling_factor=None,
        rope_original_context=None,
        vocab_size=None,
        chat_template=chat_template,
        bos_token_id=None,
        eos_token_id=None,
        eot_token_id=None,
        bos_token=bos_token,
        eos_token=eos_token,
        add_bos_token=None,
        add_eos_token=None,
    )


def check_gguf_magic(path: Path) -> None:
    """One clear line for the commonest mistakes: no file, a folder, a file that is not GGUF."""
    if not path.exists():
        raise ModelFileError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a GGUF file")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise ModelFileError(f"{path}: not a regular file")
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


def _file_type_name(fields: Fields, header: GGUFHeader) -> str | None:
    import gguf

    raw = fields.integer("general.file_type")
    if raw is not None:
        try:
            return gguf.LlamaFileType(raw).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    # No file type: name it after the commonest type among the 2-D weights.
    counts = Counter(t.type_name for t in header.tensors if len(t.shape) >= 2)
    return counts.most_common(1)[0][0] if counts else None


def _short(text: str | None) -> str | None:
    """A descriptive name cut to what a screen can show: a 60 MB `general.name` is no name."""
    if text is None or len(text) <= MAX_LABEL:
        return text
    return text[: MAX_LABEL - 1] + "…"


def _token_id(fields: Fields, key: str, vocab_size: int | None) -> int | None:
    """A special token's id; one outside the vocabulary is dropped with a warning, as llama.cpp does."""
    token_id = fields.integer(key, -(1 << 63), (1 << 64) - 1)
    if token_id is None or vocab_size is None:
        return token_id
    if not 0 <= token_id < vocab_size:
        fields.warn(key, f"is {token_id:,}, not a token of the {vocab_size:,} in the vocabulary: ignored")
        return None
    return token_id


def check_loadable(fields: Fields, arch: str, vocab_size: int | None) -> None:
    """Refuse, in one line, the values llama.cpp's loader trusts without checking.

    A block count past its 512-layer arrays makes llama.cpp write out of bounds (a
    published exploit); an unknown RoPE scaling type or inconsistent expert counts hit a
    `GGML_ASSERT` and abort the whole process (tests/hostile/test_hostile_gguf.py shows both with
    the llama.cpp installed here); older builds also assert on a tokens or merges array
    that is not strings, and read scores and token types past their end when shorter
    than the vocabulary. Cattery checks them all before llama.cpp runs.
    """
    fields.integer(f"{arch}.block_count", 1, LLAMA_MAX_LAYERS)
    for key, (vtype, _) in fields.header.types.items():  # posnet.block_count, convnext.block_count...
        if key.endswith(".block_count") and vtype in INTEGER_TYPES:
            fields.integer(key, 0, LLAMA_MAX_LAYERS)
        elif key.endswith(".expert_count") and vtype in INTEGER_TYPES:
            fields.integer(key, 0, LLAMA_MAX_EXPERTS)
    n_vocab = vocab_size or 0
    for key, item_types, should in (
        ("tokenizer.ggml.scores", {FLOAT32}, "an array of f32 numbers"),
        ("tokenizer.ggml.token_type", {INT32}, "an array of i32 integers"),
    ):
        values = fields.array(key, item_types, should)
        if values is not None and len(values) < n_vocab:
            raise fields.fail(key, f"has {len(values):,} entries for a vocabulary of {n_vocab:,} tokens")
    fields.strings("tokenizer.ggml.merges")
    fields.array("tokenizer.ggml.precompiled_charsmap", {0, 1}, "an array of bytes")
    fields.text("tokenizer.ggml.model")
    fields.text("tokenizer.ggml.pre")
    rope = fields.text(f"{arch}.rope.scaling.type")
    if rope is not None and rope not in ROPE_SCALING_TYPES:
        raise fields.fail(
            f"{arch}.rope.scaling.type",
            f"is {quoted(rope)}, not a RoPE scaling llama.cpp knows ({', '.join(ROPE_SCALING_TYPES)})",
        )
    _check_experts(fields, arch)


def _check_experts(fields: Fields, arch: str) -> None:
    """llama.cpp's own asserts on the expert counts (load_hparams), as one-line refusals."""
    experts = fields.integer(f"{arch}.expert_count", 0, LLAMA_MAX_EXPERTS) or 0
    used = fields.integer(f"{arch}.expert_used_count", 0, LLAMA_MAX_EXPERTS, per_layer=True) or 0
    groups = fields.integer(f"{arch}.expert_group_count", 0, LLAMA_MAX_EXPERTS) or 0
    group_used = fields.integer(f"{arch}.expert_group_used_count", 0, LLAMA_MAX_EXPERTS) or 0
    key = f"{arch}.expert_used_count"
    if used > experts:
        raise fields.fail(key, f"is {used}, more than the {experts} experts ({arch}.expert_count)")
    if experts and not used:
        raise fields.fail(key, f"is 0 (or missing) for a model of {experts} experts")
    if experts and groups >= experts:
        raise fields.fail(f"{arch}.expert_group_count", f"is {groups}, not fewer than the {experts} experts")
    if experts and groups > 1 and (experts % groups or not 0 < group_used < groups):
        raise fields.fail(f"{arch}.expert_group_count", f"{groups} does not divide the experts as llama.cpp needs")
    if not experts and groups:
        raise fields.fail(f"{arch}.expert_group_count", "is set for a model without experts")


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

    Only the header is read (and single vocabulary entries for the BOS/EOS texts). Every
    value is checked for type and range here, where it enters; anything wrong is one
    `GGUFFormatError` line naming `path` and the key.
    """
    header = read_header(f, str(path), size)
    fields = Fields(header, f)
    fields.integer("split.count", 0, 65535)  # a u16 in llama.cpp
    arch = fields.text("general.architecture") or "unknown"
    if len(arch) > MAX_ARCH:
        raise fields.fail("general.architecture", f"is {len(arch):,} characters long, not an architecture's name")
    tokens = fields.strings("tokenizer.ggml.tokens")
    vocab_size = len(tokens) if tokens is not None else None
    check_loadable(fields, arch, vocab_size)

    def token_text(token_id: int | None) -> str | None:
        if token_id is None or tokens is None:
            return None
        if isinstance(tokens, ArrayRef):
            return str(read_array_item(f, tokens, token_id, str(path)))
        return str(tokens[token_id])

    def a(key: str, lo: int, hi: int, **how: bool) -> int | None:
        return fields.integer(f"{arch}.{key}", lo, hi, **how)

    bos = _token_id(fields, "tokenizer.ggml.bos_token_id", vocab_size)
    eos = _token_id(fields, "tokenizer.ggml.eos_token_id", vocab_size)
    head_count = a("attention.head_count", 0, MAX_HEADS, per_layer=True)
    info = ModelInfo(
        path=path,
        file_size=size,
        architecture=arch,
        name=_short(fields.text("general.name")),
        size_label=_short(fields.text("general.size_label", required_type=False)),
        file_type=_file_type_name(fields, header),
        parameter_count=sum(t.n_elements for t in header.tensors),
        tensor_bytes=sum(t.n_bytes for t in header.tensors),
        context_length=a("context_length", 0, U32_MAX, zero_unknown=True),
        block_count=a("block_count", 1, LLAMA_MAX_LAYERS),
        embedding_length=a("embedding_length", 1, MAX_EMBEDDING),
        feed_forward_length=a("feed_forward_length", 0, MAX_FEED_FORWARD, per_layer=True),
        head_count=head_count,
        head_count_kv=a("attention.head_count_kv", 0, MAX_HEADS, per_layer=True) or head_count,
        key_length=a("attention.key_length", 0, MAX_HEAD_DIM),
        value_length=a("attention.value_length", 0, MAX_HEAD_DIM),
        rope_freq_base=fields.number(f"{arch}.rope.freq_base", MIN_ROPE_BASE, MAX_ROPE_BASE),
        rope_dimension_count=a("rope.dimension_count", 0, MAX_HEAD_DIM),
        rope_scaling_type=fields.text(f"{arch}.rope.scaling.type"),
        rope_scaling_factor=fields.number(f"{arch}.rope.scaling.factor", 0.0, MAX_ROPE_FACTOR),
        rope_original_context=a("rope.scaling.original_context_length", 0, U32_MAX),
        vocab_size=vocab_size,
        chat_template=fields.text("tokenizer.chat_template", required_type=False),
        bos_token_id=bos,
        eos_token_id=eos,
        eot_token_id=_token_id(fields, "tokenizer.ggml.eot_token_id", vocab_size),
        bos_token=token_text(bos),
        eos_token=token_text(eos),
        add_bos_token=fields.flag("tokenizer.ggml.add_bos_token"),
        add_eos_token=fields.flag("tokenizer.ggml.add_eos_token"),
    )
    factor = info.rope_scaling_factor
    if factor is not None and 0 < factor < MIN_ROPE_FACTOR:
        raise fields.fail(
            f"{arch}.rope.scaling.factor", f"is {factor:g}, out of range (0, or {MIN_ROPE_FACTOR:g} to 65536)"
        )
    info.warnings = fields.warnings
    return info
