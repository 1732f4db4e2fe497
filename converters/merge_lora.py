"""PEFT LoRA adapters, read lazily and turned into weight deltas one module at a time.

A PEFT adapter folder holds `adapter_config.json` (r, lora_alpha, use_rslora, rank_pattern,
alpha_pattern, fan_in_fan_out, modules_to_save) and `adapter_model.safetensors`, with keys
like `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`. For each module:

    ΔW = (B @ A) · (s · weight),  s = alpha / r  (alpha / √r with use_rslora)

with r and alpha per module from rank_pattern / alpha_pattern, matched as PEFT matches them
(a pattern matches a module whose name ends with it, as a regular expression, after a
dot), and s · weight one float32 factor, as PEFT's scaling multiplied by a weight is.
Embeddings store A as (r, n_tokens) and B as (dim, r), so their ΔW is (B @ A)ᵀ.
Whole tensors in the adapter replace the base model's before any ΔW is added, as PEFT
loads them: `modules_to_save` copies, and the `….base_layer.weight` PEFT saves for a
targeted embed_tokens or lm_head (save_embedding_layers, e.g. after resizing the vocabulary).

DoRA adapters and LoRA biases change more than W + ΔW; they are refused rather than merged wrong.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.checkpoint import PICKLE_SUFFIXES, Checkpoint, CheckpointError, tensors_of
from converters.merge_io import read_f32
from converters.untrusted_files import own_file, read_json

PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)(?:\.[^.]+)?\.weight$")
_EMBEDDING = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?$")
_SAVED_COPY = re.compile(r"\.modules_to_save\.[^.]+\.|\.base_layer\.")


@dataclass(frozen=True)
class LoraModule:
    target: str  # the base model's tensor it changes
    a: str  # names in the adapter file
    b: str
    rank: int
    alpha: float
    scale: float
    embedding: bool
    transpose: bool  # fan_in_fan_out: the base stores the weight as (in, out)

    def delta_shape(self, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
        out, inner = shapes[self.b][0], shapes[self.a][1]
        return (inner, out) if self.embedding or self.transpose else (out, inner)


def pattern_key(patterns: list[str], module: str, source: Path) -> str | None:
    """The first pattern that matches the module, as PEFT's `get_pattern_key` finds it."""
    for p in patterns:
        try:
            if re.match(rf"(.*\.)?({p})$", module):
                return p
        except re.error:
            raise CheckpointError(f"{source}: the pattern {p!r} is not a valid regular expression") from None
    return None


@dataclass
class LoraAdapter:
    folder: Path
    config: dict[str, Any]
    weights: Checkpoint
    modules: dict[str, LoraModule]  # by the base tensor they change
    replacements: dict[str, str]  # base tensor → adapter tensor that replaces it

    @classmethod
    def open(cls, folder: Path) -> LoraAdapter:
        folder = Path(folder)
        config_path = folder / "adapter_config.json"
        if own_file(config_path, folder, required=False) is None:
            raise CheckpointError(f"{folder}: no adapter_config.json (not a PEFT adapter folder)")
        config = read_json(config_path, folder)
        peft_type = config.get("peft_type", "LORA")
        if not isinstance(peft_type, str):
            raise CheckpointError(f"{config_path}: peft_type should be a name, not {type(peft_type).__name__}")
        if peft_type.upper() != "LORA":
            raise CheckpointError(f"{config_path}: a {peft_type[:40]} adapter; only LoRA adapters can be merged")
        if config.get("use_dora"):
            raise CheckpointError(f"{config_path}: a DoRA adapter (use_dora); only plain LoRA can be merged")
        weights_file = folder / "adapter_model.safetensors"
        if own_file(weights_file, folder, required=False) is None:
            pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickled:
                raise CheckpointError(
                    f"{folder}: only pickled weights ({pickled[0]}): Cattery never unpickles files; "
                    "convert the adapter to safetensors (adapter_model.safetensors) first"
                )
            raise CheckpointError(f"{folder}: no adapter_model.safetensors")
        tensors = {ref.name: ref for ref in tensors_of(weights_file)}
        weights = Checkpoint(folder, config, tensors)
        modules, replacements = _read_keys(weights_file, adapter_settings(config, config_path), tensors)
        return cls(folder, config, weights, modules, replacements)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: r.shape for n, r in self.weights.tensors.items()}

    def delta(self, target: str, weight: float = 1.0) -> np.ndarray:
        """(B @ A) · (s · weight) for the tensor, in float32, shaped as the base tensor."""
        m = self.modules[target]
        b, a = read_f32(self.weights, m.b), read_f32(self.weights, m.a)
        delta = np.matmul(b, a)
        del a, b
        delta *= np.float32(m.scale * weight)
        return delta.T if m.embedding or m.transpose else delta

    def replacement(self, target: str) -> np.ndarray:
        return read_f32(self.weights, self.replacements[target])


@dataclass(frozen=True)
class AdapterSettings:
    """adapter_config.json's numbers, typed: what every module's scale is made of."""

    r: int
    alpha: float
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    rslora: bool
    fan_in_fan_out: bool


MAX_RANK = 1 << 16
MAX_PATTERNS = 4096


def _flag(config: dict[str, Any], key: str, source: Path) -> bool:
    value = config.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise CheckpointError(f"{source}: {key} should be true or false, not {str(value)[:40]}")
    return value


def _rank(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RANK:
        raise CheckpointError(f"{where} should be a rank from 1 to {MAX_RANK}, not {str(value)[:40]}")
    return value


def _alpha(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or abs(value) > 1e6:
        raise CheckpointError(f"{where} should be a number, not {str(value)[:40]}")
    return float(value)


def adapter_settings(config: dict[str, Any], source: Path) -> AdapterSettings:
    """r, lora_alpha, the patterns and the flags of adapter_config.json, each of the type PEFT gives it."""
    patterns: list[dict[str, Any]] = []
    for key in ("rank_pattern", "alpha_pattern"):
        table = config.get(key) or {}
        if not isinstance(table, dict) or len(table) > MAX_PATTERNS:
            raise CheckpointError(f"{source}: {key} should map module patterns to numbers")
        patterns.append(table)
    return AdapterSettings(
        r=_rank(config.get("r", 8), f"{source}: r"),
        alpha=_alpha(config.get("lora_alpha", 8), f"{source}: lora_alpha"),
        rank_pattern={k: _rank(v, f"{source}: rank_pattern[{k[:40]!r}]") for k, v in patterns[0].items()},
        alpha_pattern={k: _alpha(v, f"{source}: alpha_pattern[{k[:40]!r}]") for k, v in patterns[1].items()},
        rslora=_flag(config, "use_rslora", source),
        fan_in_fan_out=_flag(config, "fan_in_fan_out", source),
    )


def _match_patterns(
    rank_patterns: list[str], alpha_patterns: list[str], modules: list[str], source: Path
) -> dict[str, tuple[str | None, str | None]]:
    """Each module's rank and alpha pattern. Runs contained: the patterns are a stranger's regular
    expressions, and Python's `re` cannot be stopped inside a catastrophic backtrack."""
    return {m: (pattern_key(rank_patterns, m, source), pattern_key(alpha_patterns, m, source)) for m in modules}


def _read_keys(
    source: Path, settings: AdapterSettings, tensors: dict[str, Any]
) -> tuple[dict[str, LoraModule], dict[str, str]]:
    rank_pattern, alpha_pattern = settings.rank_pattern, settings.alpha_pattern
    rslora, fan_in_fan_out = settings.rslora, settings.fan_in_fan_out
    pairs: dict[str, dict[str, str]] = {}
    embedding: dict[str, bool] = {}
    replacements: dict[str, str] = {}
    for key in tensors:
        if not key.startswith(PREFIX):
            raise CheckpointError(f"{source}: tensor {key!r} is not a PEFT key (base_model.model.…)")
        rest = key[len(PREFIX) :]
        if "lora_magnitude_vector" in rest:
            raise CheckpointError(f"{source}: a DoRA adapter ({key}); only plain LoRA can be merged")
        m = _LORA.match(rest) or _EMBEDDING.match(rest)
        if m:
            kind = m.group("kind")
            pairs.setdefault(m.group("module"), {})[kind[-1]] = key
            embedding[m.group("module")] = kind.startswith("lora_embedding")
            continue
        if ".lora_" in rest:
            raise CheckpointError(f"{source}: tensor {key!r} is not a LoRA A/B matrix (LoRA biases are not supported)")
        replacements[_SAVED_COPY.sub(".", rest)] = key
    modules: dict[str, LoraModule] = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{source}: {module} has lora_{next(iter(ab))} but not its pair")
    keys: dict[str, tuple[str | None, str | None]] = {m: (None, None) for m in pairs}
    if rank_pattern or alpha_pattern:
        from converters.contained import run_contained

        keys = run_contained(
            _match_patterns,
            list(rank_pattern),
            list(alpha_pattern),
            list(pairs),
            source,
            what=str(source.with_name("adapter_config.json")),
        )
    for module, ab in pairs.items():
        r_key, a_key = keys[module]
        rank = rank_pattern[r_key] if r_key is not None else settings.r
        alpha = alpha_pattern[a_key] if a_key is not None else settings.alpha
        a_shape, b_shape = tensors[ab["A"]].shape, tensors[ab["B"]].shape
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise CheckpointError(f"{source}: {module}: lora A {a_shape} and B {b_shape} do not fit together")
        if a_shape[0] != rank:
            raise CheckpointError(f"{source}: {module}: the config gives rank {rank} but lora A has {a_shape[0]} rows")
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        target = f"{module}.weight"
        modules[target] = LoraModule(
            target, ab["A"], ab["B"], rank, alpha, scale, embedding[module], fan_in_fan_out and not embedding[module]
        )
    return modules, replacements
