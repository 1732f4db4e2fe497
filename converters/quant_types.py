"""llama.cpp's quantization types, and what a plan of one looks like.

The table of file types is data (assets/quant_types.toml), as are the ggml types' block
sizes (gguf-py's table plus the extras). Which type each tensor gets is llama.cpp's own
answer, from its dry run (converters/quant_native.py): Cattery keeps no copy of the
mixture rules of src/llama-quant.cpp.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from app.errors import CatteryError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class QuantType:
    """One `--type`: a llama_ftype with the facts a user chooses by."""

    name: str
    ftype: int
    default: str  # the ggml type most tensors get
    bpw: float
    imatrix: bool
    about: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class TypeOptions:
    """The llama_model_quantize_params that change which tensor gets which type."""

    leave_output_tensor: bool = False
    pure: bool = False
    overrides: tuple[tuple[str, str], ...] = ()  # (regex, ggml type name), first match wins
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    has_imatrix: bool = False

    @classmethod
    def parse(
        cls,
        *,
        leave_output_tensor: bool = False,
        pure: bool = False,
        tensor_types: Sequence[str] = (),
        output_tensor_type: str | None = None,
        token_embedding_type: str | None = None,
    ) -> TypeOptions:
        """The options as llama-quantize's flags spell them (type names in any case, `PATTERN=TYPE`
        overrides), checked here once so that every caller passes the parsed object on."""
        return cls(
            leave_output_tensor=leave_output_tensor,
            pure=pure,
            overrides=parse_tensor_types(tensor_types),
            output_tensor_type=parse_ggml_type(output_tensor_type) if output_tensor_type else None,
            token_embedding_type=parse_ggml_type(token_embedding_type) if token_embedding_type else None,
        )


@dataclass(frozen=True)
class ModelShape:
    """The hyperparameters llama.cpp's quantizer reads, read (and so checked) before it runs."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (row length) first
    ggml_type: str


@dataclass(frozen=True)
class TensorChoice:
    name: str
    shape: tuple[int, ...]
    src_type: str
    new_type: str
    quantizable: bool
    needs_imatrix: bool

    @property
    def changes(self) -> bool:
        return self.src_type != self.new_type


@dataclass
class TypePlan:
    """Every tensor's type under one file type, in llama.cpp's order."""

    qtype: QuantType
    tensors: list[TensorChoice] = field(default_factory=list)
    fallbacks: int = 0

    @property
    def needs_imatrix(self) -> bool:
        return any(t.quantizable and t.needs_imatrix for t in self.tensors)

    def type_counts(self) -> Counter[str]:
        return Counter(t.new_type for t in self.tensors)


# -- the table -----------------------------------------------------------------------


@cache
def _data() -> dict[str, Any]:
    from app.assets import asset_path

    with asset_path("quant_types.toml").open("rb") as f:
        return tomllib.load(f)


@cache
def all_types() -> tuple[QuantType, ...]:
    out = []
    for name, row in _data()["types"].items():
        out.append(
            QuantType(
                name=name,
                ftype=int(row["ftype"]),
                default=str(row["default"]),
                bpw=float(row["bpw"]),
                imatrix=bool(row.get("imatrix", False)),
                about=str(row.get("about", "")),
                aliases=tuple(row.get("aliases", ())),
            )
        )
    return tuple(out)


def lookup(name: str) -> QuantType:
    """A `--type` as llama-quantize takes it: a name in any case, an alias, or the ftype number."""
    wanted = name.strip().upper()
    for qt in all_types():
        if wanted == qt.name or wanted in qt.aliases:
            return qt
    if wanted.isdigit():
        for qt in all_types():
            if qt.ftype == int(wanted):
                return qt
    from app.near_names import unknown

    raise CatteryError(unknown("quantization type", name, [qt.name for qt in all_types()]))


def by_ftype(ftype: int) -> QuantType | None:
    return next((qt for qt in all_types() if qt.ftype == ftype), None)


# -- ggml types: names, block sizes ---------------------------------------------------


@cache
def _ggml_table() -> dict[str, tuple[int, int, int]]:
    """ggml type name → (id, block size, bytes per block), from gguf-py plus the extras."""
    import gguf

    table: dict[str, tuple[int, int, int]] = {}
    for t in gguf.GGMLQuantizationType:
        size = gguf.GGML_QUANT_SIZES.get(t)
        if size is not None:
            table[t.name] = (int(t.value), int(size[0]), int(size[1]))
    for name, row in _data().get("ggml_extra", {}).items():
        table.setdefault(name, (int(row["id"]), int(row["block"]), int(row["bytes"])))
    return table


def ggml_type_id(name: str) -> int:
    return _ggml_table()[name][0]


def ggml_type_name(type_id: int) -> str:
    for name, (tid, _block, _size) in _ggml_table().items():
        if tid == type_id:
            return name
    return f"type{type_id}"


def parse_ggml_type(text: str) -> str:
    """A ggml tensor type as llama-quantize reads it (`q8_0`, `Q4_K`, `f16`, any case)."""
    wanted = text.strip().upper()
    if wanted in _ggml_table():
        return wanted
    raise CatteryError(f"unknown tensor type {text!r}; known: {', '.join(n.lower() for n in _ggml_table())}")


def parse_tensor_types(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """`PATTERN=TYPE` overrides as llama-quantize takes them: the pattern lower-cased, searched as a regex."""
    out = []
    for item in items:
        pattern, sep, type_text = item.partition("=")
        if not sep or not pattern or not type_text:
            raise CatteryError(f"--tensor-type {item!r}: expected PATTERN=TYPE, e.g. attn_v=q8_0")
        pattern = pattern.lower()
        try:
            re.compile(pattern)
        except re.error as exc:
            raise CatteryError(f"--tensor-type {item!r}: not a regular expression: {exc}") from None
        out.append((pattern, parse_ggml_type(type_text)))
    return tuple(out)


def block_size(name: str) -> int:
    return _ggml_table()[name][1]


def is_quantized(name: str) -> bool:
    """ggml's is_quantized: block types, not F32/F16/BF16/integers."""
    return block_size(name) > 1


def row_bytes(name: str, ne0: int) -> int:
    _tid, block, size = _ggml_table()[name]
    return ne0 // block * size


def tensor_bytes(name: str, shape: Sequence[int]) -> int:
    rows = 1
    for d in shape[1:]:
        rows *= d
    return rows * row_bytes(name, shape[0])


# -- which tensors need an importance matrix -------------------------------------------


def needs_imatrix(name: str, new_type: str, ftype: str) -> bool:
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    if new_type in _data()["imatrix_required"]["ggml_types"]:
        return True
    return new_type == "Q2_K" and ftype == "Q2_K_S"
