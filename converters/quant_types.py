"""llama.cpp's quantization types, and which type each tensor of a model gets under each.

The table of file types is data (assets/quant_types.toml). The mixture rules are
llama.cpp's own (src/llama-quant.cpp: tensor_allows_quantization, llama_tensor_get_type,
tensor_type_fallback), restated here so that a quantization can be sized, checked for
a missing importance matrix and refused before llama.cpp starts writing gigabytes: the
C API has no way to ask which type a tensor will get without doing the work. The tests
hold this model against llama.cpp's own dry run for every type.

Tensors are visited in llama.cpp's order (by layer number, then by name), because the
rules count attn_v / ffn_down tensors as they go and bump "every third layer".
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
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
    """The hyperparameters the rules look at."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        # llama.cpp's LLM_TYPE_70B: an 80-layer llama with grouped-query attention
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


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


# -- the rules ------------------------------------------------------------------------


def llama_order(tensors: Iterable[TensorEntry]) -> list[TensorEntry]:
    """llama.cpp's weights_map order: tensors outside blocks first, then by layer, by name within."""

    def key(t: TensorEntry) -> tuple[int, str]:
        m = re.match(r"blk\.(\d+)\.", t.name)
        return (int(m.group(1)) if m else -1, t.name)

    return sorted(tensors, key=key)


def _n_dims(shape: Sequence[int]) -> int:
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return n


def allows_quantization(t: TensorEntry, opts: TypeOptions) -> bool:
    if _n_dims(t.shape) < 2 or not t.name.endswith("weight"):
        return False
    rules = _data()["never_quantized"]
    if t.name in rules["named"] or any(part in t.name for part in rules["containing"]):
        return False
    return not (opts.leave_output_tensor and t.name == "output.weight")


def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for part, cat in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_kv_b.weight", "attn_kv_b"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if part in name:
            return cat
    return "other"


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


_IQ2_FAMILY = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")


class _Mixer:
    """llama_tensor_get_type_impl with its running counters, for dense and MoE llama-like models."""

    def __init__(self, model: ModelShape, ftype: str, tensors: Sequence[TensorEntry], opts: TypeOptions) -> None:
        self.m = model
        self.ftype = ftype
        self.opts = opts
        cats = [category(t.name) for t in tensors]
        self.n_attention_wv = sum(c in ("attn_v", "attn_qkv", "attn_kv_b") for c in cats)
        self.tied = "output" not in cats
        self.n_ffn = model.n_layer
        self.i_attention_wv = 0
        self.i_ffn_down = 0
        self.i_ffn_gate = 0
        self.i_ffn_up = 0

    def _layer(self, counter: int, name: str) -> tuple[int, int]:
        if self.m.n_expert > 1:
            match = re.match(r"blk\.(\d+)\.", name)
            if match is None:
                raise CatteryError(f"{name}: cannot tell its layer")
            return int(match.group(1)), self.n_ffn
        return counter, self.n_ffn

    def choose(self, t: TensorEntry, new: str, cat: str) -> str:
        f, m, o = self.ftype, self.m, self.opts
        has_imatrix = o.has_imatrix
        is_attn_v = cat in ("attn_v", "attn_qkv", "attn_kv_b")
        if cat == "output" or (self.tied and cat == "token_embd"):
            if o.output_tensor_type is not None:
                return o.output_tensor_type
            nx = t.shape[0]
            if f == "MXFP4_MOE" or m.arch == "falcon" or nx % block_size(new) != 0:
                return "Q8_0"
            if f in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
                return "Q5_K"
            return "Q6_K" if new != "Q8_0" else new
        if f == "MXFP4_MOE":
            expert = len(t.shape) > 2 and t.shape[2] > 1
            if m.arch == "bailingmoe3":
                expert = expert and cat in ("ffn_up", "ffn_gate", "ffn_down")
            return "MXFP4" if expert else "Q8_0"
        if cat == "token_embd":
            if o.token_embedding_type is not None:
                return o.token_embedding_type
            if f in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
                return "Q2_K"
            if f in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
                return "IQ3_S"
            if f in ("TQ1_0", "TQ2_0", "Q2_0"):
                return "Q4_K"
            return new
        if f in _IQ2_FAMILY:
            if is_attn_v:
                low = "IQ3_S" if f in ("IQ2_S", "IQ2_M") else "Q2_K"
                new = "Q4_K" if m.n_gqa >= 4 or m.n_expert >= 4 else low
                self.i_attention_wv += 1
            elif m.n_expert == 8 and cat == "attn_k":
                new = "Q4_K"
            elif cat == "ffn_down":
                if self.i_ffn_down < self.n_ffn // 8:
                    new = "IQ3_S" if f in ("IQ2_S", "IQ2_M") else "Q2_K"
                self.i_ffn_down += 1
            elif cat == "attn_output":
                if m.n_expert == 8:
                    new = "Q5_K"
                elif f in ("IQ1_S", "IQ1_M"):
                    new = "IQ2_XXS"
                elif f in ("IQ2_S", "IQ2_M"):
                    new = "IQ3_S"
            return new
        if is_attn_v:
            gqa4 = m.n_gqa >= 4
            if f == "Q2_K":
                new = "Q4_K" if gqa4 else "Q3_K"
            elif f == "Q2_K_S" and gqa4:
                new = "Q4_K"
            elif f == "IQ3_XXS":
                new = "Q4_K" if gqa4 else ("IQ3_S" if not has_imatrix else "IQ3_XXS")
            elif (f in ("IQ3_XS", "IQ3_S") and gqa4) or f == "IQ3_M":
                new = "Q4_K"
            elif f == "Q3_K_M":
                new = "Q5_K" if self.i_attention_wv < 2 else "Q4_K"
            elif f == "Q3_K_L" or (f in ("IQ4_NL", "IQ4_XS") and gqa4):
                new = "Q5_K"
            elif f in ("Q4_K_M", "Q5_K_M") and _use_more_bits(self.i_attention_wv, self.n_attention_wv):
                new = "Q6_K"
            elif f == "Q4_K_S" and self.i_attention_wv < 4:
                new = "Q5_K"
            if m.is_70b and new in ("Q3_K", "Q4_K"):
                new = "Q5_K"
            if m.n_expert == 8:
                new = "Q8_0"
            self.i_attention_wv += 1
            return new
        if cat == "attn_k":
            if m.n_expert == 8:
                return "Q8_0"
            return {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}.get(f, new)
        if cat == "attn_q":
            return {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}.get(f, new)
        if cat == "ffn_down":
            i_layer, n_layer = self._layer(self.i_ffn_down, t.name)
            falcon = m.arch == "falcon"
            if f == "Q2_K":
                new = "Q3_K"
            elif f == "Q2_K_S":
                if i_layer < n_layer // 8:
                    new = "Q4_K"
            elif f == "IQ3_XXS" and not has_imatrix:
                new = "Q4_K" if i_layer < n_layer // 8 else "Q3_K"
            elif f == "Q3_K_M":
                if i_layer < n_layer // 16:
                    new = "Q5_K"
                elif not falcon or _use_more_bits(i_layer, n_layer):
                    new = "Q4_K"
                else:
                    new = "Q3_K"
            elif f == "IQ3_M" and (i_layer < n_layer // 8 or (m.n_expert == 8 and _use_more_bits(i_layer, n_layer))):
                new = "Q4_K"
            elif f == "Q3_K_L":
                new = "Q4_K" if falcon else "Q5_K"
            elif f == "Q4_K_M":
                if falcon:
                    new = (
                        "Q6_K" if i_layer < n_layer // 16 else ("Q5_K" if _use_more_bits(i_layer, n_layer) else "Q4_K")
                    )
                elif _use_more_bits(i_layer, n_layer):
                    new = "Q6_K"
            elif i_layer < n_layer // 8 and f in ("IQ4_NL", "IQ4_XS") and not has_imatrix:
                new = "Q5_K"
            elif f == "Q5_K_M" and _use_more_bits(i_layer, n_layer):
                new = "Q6_K"
            elif f == "Q4_K_S" and not falcon and i_layer < n_layer // 8:
                new = "Q5_K"
            elif f in ("Q4_0", "Q5_0") and has_imatrix and i_layer < n_layer // 8:
                new = "Q4_1" if f == "Q4_0" else "Q5_1"
            self.i_ffn_down += 1
            return new
        if cat == "attn_output":
            if m.arch != "falcon":
                if m.n_expert == 8:
                    if f in (
                        "Q2_K",
                        "IQ3_XS",
                        "IQ3_XXS",
                        "Q3_K_S",
                        "Q3_K_M",
                        "IQ4_NL",
                        "Q4_K_S",
                        "Q4_K_M",
                        "IQ3_S",
                        "IQ3_M",
                        "IQ4_XS",
                    ):
                        new = "Q5_K"
                else:
                    new = {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}.get(
                        f, new
                    )
            elif f == "Q3_K_L":
                new = "Q4_K"
            return new
        if cat == "attn_qkv":
            return {"Q3_K_M": "Q4_K", "Q3_K_L": "Q4_K", "IQ3_M": "Q4_K", "Q4_K_M": "Q5_K", "Q5_K_M": "Q6_K"}.get(f, new)
        if cat in ("ffn_gate", "ffn_up"):
            counter = self.i_ffn_gate if cat == "ffn_gate" else self.i_ffn_up
            i_layer, n_layer = self._layer(counter, t.name)
            if f == "IQ3_XS" and n_layer // 8 <= i_layer < 7 * n_layer // 8:
                new = "IQ3_XXS"
            if cat == "ffn_gate":
                self.i_ffn_gate += 1
            else:
                self.i_ffn_up += 1
            return new
        return new


def _fallback(t: TensorEntry, target: str) -> tuple[str, bool]:
    ncols = t.shape[0]
    if ncols % block_size(target) == 0:
        return target, False
    other = _data()["fallback"].get(target)
    if other is None:
        raise CatteryError(
            f"{t.name}: rows of {ncols} do not fit {target}'s blocks of {block_size(target)} "
            "and llama.cpp has no other type for it"
        )
    if ncols % block_size(other) != 0:
        other = "F16"
    return other, True


def needs_imatrix(name: str, new_type: str, ftype: str) -> bool:
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    if new_type in _data()["imatrix_required"]["ggml_types"]:
        return True
    return new_type == "Q2_K" and ftype == "Q2_K_S"


def plan_types(
    qtype: QuantType, model: ModelShape, tensors: Sequence[TensorEntry], opts: TypeOptions | None = None
) -> TypePlan:
    """The type llama_model_quantize gives each tensor, in the order it writes them."""
    opts = opts or TypeOptions()
    ordered = llama_order(tensors)
    mixer = _Mixer(model, qtype.name, ordered, opts)
    default = qtype.default
    compiled = [(re.compile(p), ty) for p, ty in opts.overrides]
    plan = TypePlan(qtype)
    for t in ordered:
        cat = category(t.name)
        quantizable = allows_quantization(t, opts)
        if not quantizable:
            new = t.ggml_type
        elif opts.token_embedding_type is not None and cat == "token_embd":
            new = opts.token_embedding_type
        elif opts.output_tensor_type is not None and cat == "output":
            new = opts.output_tensor_type
        else:
            new = default
            if is_quantized(default):
                manual = False
                for pattern, ty in compiled:
                    if pattern.search(t.name):
                        new, manual = ty, True
                        break
                if not manual and not opts.pure:
                    new = mixer.choose(t, new, cat)
                new, fell_back = _fallback(t, new)
                plan.fallbacks += fell_back
        plan.tensors.append(
            TensorChoice(
                name=t.name,
                shape=t.shape,
                src_type=t.ggml_type,
                new_type=new,
                quantizable=quantizable,
                needs_imatrix=quantizable and needs_imatrix(t.name, new, qtype.name),
            )
        )
    return plan
