"""A llama checkpoint's config.json checked before anything is computed from it, and against its tensors.

Every number in config.json ends up in a GGUF field of a fixed width (uint32, float32),
a divisor, a reshape or an allocation: `num_key_value_heads = 0` divides by zero,
`max_position_embeddings = 2**70` does not fit a uint32, `vocab_size = 10**12` builds a
list of a trillion padding tokens, `num_hidden_layers = 10**6` builds a name map of a
million layers. So each field is typed and bounded here, and then the config is held
against the tensors: a config that lies about `hidden_size` would otherwise become a
GGUF that llama.cpp cannot load, or a merge that mixes rows of different meaning.

Bounds are far above any honest llama (405B: hidden 16384, 126 layers, 128 heads,
FFN 53248, vocab 128256; the largest vocabularies are 262144), and low enough that
nothing sized by them alone can exhaust memory or time.
"""

from __future__ import annotations

import math
import re
from typing import Any

from converters.errors import CheckpointError
from converters.llama_layout import GLOBAL, LAYER, Module, dimensions

INT_LIMITS = {
    "hidden_size": 1 << 17,
    "intermediate_size": 1 << 20,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "vocab_size": 1 << 18,  # the largest honest vocabulary (262,144): ~3 s and ~140 MB to read here
}
MAX_HEAD_DIM = 4096
MAX_CONTEXT = 1 << 24
MAX_ROPE_THETA = 1e12
MAX_FACTOR = 1e4
ROPE_NUMBERS = ("extrapolation_factor", "attention_factor", "attn_factor", "beta_fast", "beta_slow")
ROPE_TYPES = ("default", "linear", "yarn", "llama3")
TOKEN_ID_KEYS = tuple(f"{t}_token_id" for t in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _describe(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:40] + "…"


def check_types(config: dict[str, Any], where: str) -> None:
    """The fields read before the architecture is known: what they are, not yet what they say."""
    archs = config.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise CheckpointError(f"{where}: config.json: architectures should be a list of names, not {_describe(archs)}")
    for key in ("model_type", "_name_or_path"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise CheckpointError(f"{where}: config.json: {key} should be a string, not {_describe(config[key])}")
    for key in TOKEN_ID_KEYS:
        v = config.get(key)
        ok = v is None or _is_int(v) or (isinstance(v, list) and all(_is_int(x) for x in v))
        if not ok:
            raise CheckpointError(f"{where}: config.json: {key} should be a token id, not {_describe(v)}")


def _whole(hp: dict[str, Any], key: str, limit: int, where: str) -> int:
    v = hp[key]
    if not _is_int(v) or not 1 <= v <= limit:
        raise CheckpointError(
            f"{where}: config.json: {key} should be a whole number from 1 to {limit:,}, not {_describe(v)}"
        )
    return int(v)


def _positive(value: Any, key: str, where: str, *, limit: float = math.inf, below_one: bool = False) -> float:
    ok = _is_number(value) and value > 0 and (value < 1 if below_one else value <= limit)
    if not ok:
        bound = "between 0 and 1" if below_one else f"a positive number up to {limit:g}"
        raise CheckpointError(f"{where}: config.json: {key} should be {bound}, not {_describe(value)}")
    return float(value)


def check_hparams(hp: dict[str, Any], config: dict[str, Any], where: str) -> None:
    """Sizes, divisors, RoPE and norm settings of a llama config (defaults already filled in), in place:
    `head_dim` is set as transformers sets it."""
    for key, limit in INT_LIMITS.items():
        _whole(hp, key, limit, where)
    heads, kv = hp["num_attention_heads"], hp["num_key_value_heads"]
    if heads % kv:
        raise CheckpointError(f"{where}: config.json: {heads} attention heads cannot share {kv} KV heads")
    if config.get("head_dim") is not None:
        head_dim = _whole(hp, "head_dim", MAX_HEAD_DIM, where)
    else:
        if hp["hidden_size"] % heads:
            raise CheckpointError(
                f"{where}: config.json: hidden_size {hp['hidden_size']} is not a whole number of "
                f"{heads} heads (and no head_dim says otherwise)"
            )
        head_dim = hp["hidden_size"] // heads
        if head_dim > MAX_HEAD_DIM:
            raise CheckpointError(f"{where}: config.json: heads of {head_dim} dimensions (the most is {MAX_HEAD_DIM})")
    if head_dim % 2:
        raise CheckpointError(f"{where}: config.json: heads of {head_dim} dimensions; RoPE needs an even number")
    hp["head_dim"] = head_dim
    if not _is_int(hp.get("context_length")) or not 1 <= hp["context_length"] <= MAX_CONTEXT:
        raise CheckpointError(
            f"{where}: config.json: max_position_embeddings should be a whole number from 1 to {MAX_CONTEXT:,}, "
            f"not {_describe(hp.get('context_length'))}"
        )
    _positive(hp["rms_norm_eps"], "rms_norm_eps", where, below_one=True)
    _positive(hp["rope_theta"], "rope_theta", where, limit=MAX_ROPE_THETA)
    if not isinstance(hp.get("tie_word_embeddings"), bool):
        tied = _describe(hp["tie_word_embeddings"])
        raise CheckpointError(f"{where}: config.json: tie_word_embeddings should be true or false, not {tied}")
    _check_rope(hp["rope"], where)


def rope_table(hp: dict[str, Any], where: str) -> dict[str, Any]:
    """rope_parameters (newer transformers) or rope_scaling, which must be a table if given."""
    for key in ("rope_parameters", "rope_scaling"):
        value = hp.get(key)
        if value is None or value == {}:
            continue
        if not isinstance(value, dict):
            raise CheckpointError(f"{where}: config.json: {key} should be a table, not {_describe(value)}")
        return dict(value)
    return {}


def _check_rope(rope: dict[str, Any], where: str) -> None:
    for key in ("type", "rope_type"):
        if rope.get(key) is not None and not isinstance(rope[key], str):
            raise CheckpointError(
                f"{where}: config.json: rope_scaling.{key} should be a name, not {_describe(rope[key])}"
            )
    _positive(rope.get("rope_theta"), "rope_scaling.rope_theta", where, limit=MAX_ROPE_THETA)
    if rope.get("factor") is not None:
        _positive(rope["factor"], "rope_scaling.factor", where, limit=MAX_FACTOR)
    orig = rope.get("original_max_position_embeddings")
    if orig is not None and (not _is_int(orig) or not 1 <= orig <= MAX_CONTEXT):
        raise CheckpointError(
            f"{where}: config.json: rope_scaling.original_max_position_embeddings should be a whole number "
            f"from 1 to {MAX_CONTEXT:,}, not {_describe(orig)}"
        )
    for key in ROPE_NUMBERS:
        v = rope.get(key)
        if v is not None and (not _is_number(v) or abs(v) > MAX_FACTOR):
            raise CheckpointError(f"{where}: config.json: rope_scaling.{key} should be a number, not {_describe(v)}")
    kind = str(rope.get("rope_type") or "default").lower()
    if kind not in ROPE_TYPES:
        raise CheckpointError(
            f"{where}: config.json: RoPE scaling {kind[:40]!r} is not supported (linear, yarn, llama3)"
        )
    if kind == "yarn" and rope.get("factor") is not None and orig is None:
        raise CheckpointError(f"{where}: config.json: yarn RoPE scaling needs original_max_position_embeddings")
    if kind == "llama3":
        low = _positive(rope.get("low_freq_factor", 1.0), "rope_scaling.low_freq_factor", where, limit=MAX_FACTOR)
        high = _positive(rope.get("high_freq_factor", 4.0), "rope_scaling.high_freq_factor", where, limit=MAX_FACTOR)
        if high <= low:
            raise CheckpointError(
                f"{where}: config.json: rope_scaling.high_freq_factor ({high:g}) must be above "
                f"low_freq_factor ({low:g})"
            )


# -- the config against the tensors ----------------------------------------------------------

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def expected_shapes(
    hp: dict[str, Any],
) -> tuple[dict[str, tuple[tuple[int, str], ...]], dict[str, tuple[tuple[int, str], ...]]]:
    """(global tensors, per-layer tensors): each dimension with the config key it comes from."""
    dims = dimensions(hp)

    def sized(modules: tuple[Module, ...]) -> dict[str, tuple[tuple[int, str], ...]]:
        return {name: tuple(dims[d] for d in shape) for m in modules for name, shape in m.shapes().items()}

    return sized(GLOBAL), sized(LAYER)


def check_shapes(hp: dict[str, Any], shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Every llama tensor has the shape config.json gives it, and no layer lies past num_hidden_layers.

    A mismatch names the tensor and the config key, so the user knows which of the two lies.
    """
    glob, layer = expected_shapes(hp)
    n_layers = hp["num_hidden_layers"]
    for name, shape in shapes.items():
        m = _LAYER.match(name)
        if m:
            if int(m.group(1)) >= n_layers:
                raise CheckpointError(f"{where}: tensor {name} is past the {n_layers} layers config.json gives")
            want = layer.get(m.group(2))
        else:
            want = glob.get(name)
        if want is None:
            continue
        shape = tuple(shape)
        if len(shape) != len(want):
            dims = "×".join(str(v) for v, _ in want)
            raise CheckpointError(f"{where}: tensor {name} is {_shape(shape)}, config.json gives {dims}")
        for got, (value, key) in zip(shape, want, strict=True):
            if got != value:
                raise CheckpointError(
                    f"{where}: tensor {name} is {_shape(shape)} but config.json's {key} gives {value} "
                    f"(a config that does not match its weights)"
                )


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape) or "a scalar"
