"""Merge recipes: a TOML file saying which checkpoints to merge, how, and into what.

A recipe starts from a base model and applies steps to it in order; each step takes the
model so far and one or more other checkpoints. Paths are relative to the recipe file.

    name = "chronolima-airo-grad-l2-13B"  # optional: the model's name in a GGUF output (default: the file's)
    base = "chronos-13b-v2"          # a Hugging Face folder (config.json + safetensors)
    dtype = "bf16"                   # optional: f32 | f16 | bf16 (default: as the base stores each tensor)
    shard_size = "5GB"               # optional: the most bytes per safetensors shard (default 5 GB)
    tokenizer = "chronos-13b-v2"     # optional: whose tokenizer files go with the result (default: base)

    [[steps]]                        # W' = W + weight · alpha/r · (B @ A), per module of a PEFT adapter
    method = "lora"
    adapter = "limarp-llama2-lora"   # adapter_config.json + adapter_model.safetensors
    weight = 0.25

    [[steps]]                        # the model so far · (1 - v) + model · v, v per layer
    method = "gradient"
    mode = "layer"                   # as mergekit; mode = "tensor" is BlockMerge_Gradient (below)
    model = "airoboros-l2-13b-gpt4-2.0"
    values = [0.9, 0.0, 0.0]         # the weight of `model` along the layers…
    layers = [0, 25, 39]             # …at these layers (optional; default: spread evenly)

    [[steps]]                        # Σ wᵢ·Wᵢ (/ Σ wᵢ when normalize, the default)
    method = "linear"
    models = ["a", "b"]
    weights = [0.5, 0.3, 0.2]        # the model so far first, then one per model

    [[steps]]                        # spherical interpolation of whole tensors (lerp when nearly parallel)
    method = "slerp"
    model = "b"
    t = 0.5                          # 0 = the model so far, 1 = `model`

Values (`weight` of a LoRA excepted) follow mergekit's rules, per tensor:
- a number;
- a list of numbers: a gradient, read at t = layer / (n_layers - 1) by linear interpolation
  between evenly spaced points; everything outside the layers (the embeddings, the final norm
  and `lm_head`) sits at t = 0, as mergekit 0.1.5's planner puts both ends of the model;
- a table `{values = [...], layers = [...]}`: the same, with the points at the given layers
  (a Cattery addition: "0.9 down to 0 by layer 25 of 40" needs no 40-value list);
- a list of tables `{filter = "self_attn", value = ...}`: the first whose filter occurs in the
  tensor's name (no filter, or "*", matches every tensor) gives the value.

`mode = "tensor"` is Gryphe's BlockMerge_Gradient: `values` (numbers only) are spread with
linspace over the tensors in state-dict order, each section getting len // (len(values) - 1)
of them and the remainder the last value; `layer_only = true` takes only tensors whose name
contains "layer", `no_layers = true` only the others, `filter = "mlp"` only names containing
it; the rest stay as they are. A vocabulary larger in the model so far keeps its extra rows.

Vocabulary sizes that differ are handled as each method's reference does: LoRA, linear,
layer gradients and SLERP take the common rows (mergekit's --unsafe-truncate-embeddings);
tensor gradients keep the size of the model so far (BlockMerge_Gradient). Either is reported.

The optional `[gguf]` table (`outtype`, `pre_tokenizer`, `chat_format`) applies when the
output is a .gguf file, written straight from the merge.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import InputError
from converters.recipe_checks import gguf_options, is_folder, path_value, plain_name, read_recipe

METHODS = ("lora", "linear", "gradient", "slerp")
DTYPES = {"f32": "F32", "float32": "F32", "f16": "F16", "float16": "F16", "bf16": "BF16", "bfloat16": "BF16"}
GGUF_KEYS = ("outtype", "pre_tokenizer", "chat_format")
DEFAULT_SHARD = 5 * 1000**3
_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


MAX_STEPS = 256
MAX_LIST = 4096  # values, layers, models or filter cases in one setting
MAX_VALUE = 1e6  # a weight beyond this only overflows float32 tensors
MAX_SHARD = 1 << 50


class RecipeError(InputError):
    """A recipe that cannot be run as written: one line naming the file and the key."""


# -- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gradient:
    """Values along the layers: evenly spread (mergekit) or at given layers."""

    values: tuple[float, ...]
    layers: tuple[float, ...] | None = None

    def at(self, t: float, n_layers: int) -> float:
        if self.layers is not None:
            position = t * (n_layers - 1)
            if position <= self.layers[0]:
                return self.values[0]
            points = list(zip(self.layers, self.values, strict=True))
            for (l0, v0), (l1, v1) in itertools.pairwise(points):
                if position <= l1:
                    frac = (position - l0) / (l1 - l0)
                    return (1 - frac) * v0 + frac * v1
            return self.values[-1]
        # mergekit's evaluate_setting, to the letter
        scaled = t * (len(self.values) - 1)
        i0 = int(scaled)
        i1 = min(len(self.values) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * self.values[i0] + frac * self.values[i1]


Value = float | Gradient


@dataclass(frozen=True)
class Setting:
    """A per-tensor value: (filter, value) cases, the first matching one wins."""

    cases: tuple[tuple[str | None, Value], ...]

    def value(self, name: str, t: float, n_layers: int) -> float | None:
        for flt, v in self.cases:
            if flt is None or flt == "*" or flt in name:
                return v.at(t, n_layers) if isinstance(v, Gradient) else v
        return None

    @classmethod
    def constant(cls, v: float) -> Setting:
        return cls(((None, float(v)),))


# -- steps ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraStep:
    adapter: Path
    weight: float
    method: str = "lora"


@dataclass(frozen=True)
class LinearStep:
    models: tuple[Path, ...]
    weights: tuple[Setting, ...]  # the model so far first
    normalize: bool = True
    method: str = "linear"


@dataclass(frozen=True)
class LayerGradientStep:
    model: Path
    values: Setting
    method: str = "gradient (layer)"


@dataclass(frozen=True)
class TensorGradientStep:
    model: Path
    values: tuple[float, ...]
    layer_only: bool = False
    no_layers: bool = False
    filter: str | None = None
    method: str = "gradient (tensor)"


@dataclass(frozen=True)
class SlerpStep:
    model: Path
    t: Setting
    method: str = "slerp"


Step = LoraStep | LinearStep | LayerGradientStep | TensorGradientStep | SlerpStep


@dataclass
class Recipe:
    source: str  # the file, for messages
    base: Path
    steps: list[Step]
    dtype: str | None = None  # safetensors' name (F32, F16, BF16), None = as the base stores it
    shard_size: int = DEFAULT_SHARD
    tokenizer: Path | None = None
    gguf: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    text: str | None = None  # the recipe as written, kept with the merged model

    def models(self) -> list[Path]:
        """Every checkpoint folder the recipe reads (adapters excluded), base first, each once."""
        out = [self.base]
        for s in self.steps:
            paths = s.models if isinstance(s, LinearStep) else () if isinstance(s, LoraStep) else (s.model,)
            out += [p for p in paths if p not in out]
        return out

    def adapters(self) -> list[Path]:
        return [s.adapter for s in self.steps if isinstance(s, LoraStep)]


# -- parsing -------------------------------------------------------------------------------


def load_recipe(path: Path, *, resolve: Callable[[str], Path] | None = None) -> Recipe:
    path = Path(path)
    text, data = read_recipe(path, RecipeError)
    recipe = parse_recipe(data, path.parent, source=str(path), resolve=resolve)
    recipe.text = text
    return recipe


def parse_recipe(
    data: dict[str, Any],
    root: Path,
    *,
    source: str = "recipe",
    resolve: Callable[[str], Path] | None = None,
) -> Recipe:
    """A recipe from its TOML table; `resolve` maps a model name to a folder (default: a path from `root`).

    A recipe inside a larger file (a build recipe's `[merge]` table) goes through here too.
    """

    def where(key: str) -> str:
        return f"{source}: {key}"

    def folder(value: Any, key: str, kind: str = "model") -> Path:
        if not isinstance(value, str) or not value:
            raise RecipeError(f"{where(key)}: expected the path of a {kind} folder")
        path = resolve(value) if resolve else path_value(value, where(key), RecipeError, root)
        if not is_folder(path):
            raise RecipeError(f"{where(key)}: {value[:80]}: no such folder ({str(path)[:200]})")
        return path

    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a table of keys")

    unknown = sorted(set(data) - {"base", "dtype", "shard_size", "tokenizer", "steps", "gguf", "name"})
    if unknown:
        raise RecipeError(
            f"{where(unknown[0])}: unknown key (expected name, base, steps, dtype, shard_size, tokenizer, gguf)"
        )
    if "base" not in data:
        raise RecipeError(f'{source}: no base model (base = "folder")')
    base = folder(data["base"], "base")
    dtype = None
    if "dtype" in data:
        raw = data["dtype"]
        if not isinstance(raw, str) or raw.lower() not in DTYPES:
            raise RecipeError(f"{where('dtype')}: {raw!r} is not one of f32, f16, bf16")
        dtype = DTYPES[raw.lower()]
    shard = _size(data.get("shard_size", DEFAULT_SHARD), where("shard_size"))
    tokenizer = folder(data["tokenizer"], "tokenizer") if "tokenizer" in data else None
    gguf = gguf_options(data.get("gguf", {}), where("gguf"), RecipeError)
    raw_steps = data.get("steps", [])
    if not isinstance(raw_steps, list) or not all(isinstance(s, dict) for s in raw_steps):
        raise RecipeError(f"{where('steps')}: expected [[steps]] tables")
    if not raw_steps:
        raise RecipeError(f"{source}: no steps (add [[steps]] tables: {', '.join(METHODS)})")
    if len(raw_steps) > MAX_STEPS:
        raise RecipeError(f"{where('steps')}: more than {MAX_STEPS} steps")
    steps = [_parse_step(s, f"steps[{i + 1}]", where, folder) for i, s in enumerate(raw_steps)]
    name = data.get("name")
    if name is not None:
        name = plain_name(name, where("name"), RecipeError, slash=True)
    return Recipe(source, base, steps, dtype, shard, tokenizer, gguf, name)


def _parse_step(raw: dict[str, Any], key: str, where: Callable[[str], str], folder: Callable[..., Path]) -> Step:
    method = raw.get("method")
    if not isinstance(method, str) or method not in METHODS:
        raise RecipeError(f"{where(key)}: method {_short(method)} is not one of {', '.join(METHODS)}")
    key = f"{key} ({method})"

    def allow(*keys: str) -> None:
        extra = sorted(set(raw) - {"method", *keys})
        if extra:
            raise RecipeError(f"{where(key)}: unknown key {extra[0]!r} (expected {', '.join(keys)})")

    def need(name: str) -> Any:
        if name not in raw:
            raise RecipeError(f"{where(key)}: missing {name!r}")
        return raw[name]

    if method == "lora":
        allow("adapter", "weight")
        weight = _number(raw.get("weight", 1.0), where(f"{key}.weight"))
        return LoraStep(folder(need("adapter"), f"{key}.adapter", "PEFT adapter"), weight)
    if method == "slerp":
        allow("model", "t", "layers")
        return SlerpStep(folder(need("model"), f"{key}.model"), _setting(need("t"), where(f"{key}.t"), raw))
    if method == "linear":
        allow("models", "weights", "normalize", "layers")
        models = need("models")
        if not isinstance(models, list) or not models or len(models) > MAX_LIST:
            raise RecipeError(f"{where(key)}: models must be a list of folders")
        paths = tuple(folder(m, f"{key}.models[{i + 1}]") for i, m in enumerate(models))
        weights = need("weights")
        if not isinstance(weights, list) or len(weights) != len(paths) + 1:
            raise RecipeError(
                f"{where(key)}: weights needs {len(paths) + 1} entries: the model so far, then one per model"
            )
        settings = tuple(_setting(w, where(f"{key}.weights[{i + 1}]"), raw) for i, w in enumerate(weights))
        normalize = raw.get("normalize", True)
        if not isinstance(normalize, bool):
            raise RecipeError(f"{where(key)}: normalize must be true or false")
        return LinearStep(paths, settings, normalize)
    mode = raw.get("mode", "layer")
    model = folder(need("model"), f"{key}.model")
    if mode == "layer":
        allow("mode", "model", "values", "layers")
        return LayerGradientStep(model, _setting(need("values"), where(f"{key}.values"), raw))
    if mode == "tensor":
        allow("mode", "model", "values", "layer_only", "no_layers", "filter")
        values = need("values")
        if not isinstance(values, list) or not values:
            raise RecipeError(f'{where(key)}: values must be a list of numbers (mode = "tensor")')
        numbers = _numbers(values, where(f"{key}.values"))
        layer_only, no_layers = raw.get("layer_only", False), raw.get("no_layers", False)
        if not isinstance(layer_only, bool) or not isinstance(no_layers, bool):
            raise RecipeError(f"{where(key)}: layer_only and no_layers are true or false")
        if layer_only and no_layers:
            raise RecipeError(f"{where(key)}: layer_only and no_layers exclude each other")
        flt = raw.get("filter")
        if flt is not None and (not isinstance(flt, str) or not flt):
            raise RecipeError(f'{where(key)}: filter must be a piece of a tensor name, like "mlp"')
        return TensorGradientStep(model, numbers, layer_only, no_layers, flt)
    raise RecipeError(f'{where(key)}: mode {_short(mode)} is not "layer" (mergekit) or "tensor" (BlockMerge_Gradient)')


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:40] + "…"


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or abs(v) > MAX_VALUE:
        raise RecipeError(f"{where}: expected a number (at most {MAX_VALUE:g} either way), got {_short(v)}")
    return float(v)


def _numbers(v: list[Any], where: str) -> tuple[float, ...]:
    if len(v) > MAX_LIST:
        raise RecipeError(f"{where}: more than {MAX_LIST} values")
    return tuple(_number(x, where) for x in v)


def _value(v: Any, where: str, step_layers: Any = None) -> Value:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return _number(v, where)
    if isinstance(v, list):
        if not v:
            raise RecipeError(f"{where}: an empty list")
        values = _numbers(v, where)
        return _gradient(values, step_layers, where) if step_layers is not None else Gradient(values)
    if isinstance(v, dict) and set(v) == {"values", "layers"}:
        if not isinstance(v["values"], list) or not v["values"]:
            raise RecipeError(f"{where}: values must be a list of numbers")
        return _gradient(_numbers(v["values"], where), v["layers"], where)
    raise RecipeError(f"{where}: expected a number, a list of numbers or {{values = [...], layers = [...]}}")


def _gradient(values: tuple[float, ...], layers: Any, where: str) -> Gradient:
    if not isinstance(layers, list) or len(layers) != len(values):
        raise RecipeError(f"{where}: layers must list one layer per value ({len(values)})")
    at = _numbers(layers, where)
    if any(b <= a for a, b in itertools.pairwise(at)):
        raise RecipeError(f"{where}: layers must increase")
    return Gradient(values, at)


def _setting(v: Any, where: str, step: dict[str, Any]) -> Setting:
    step_layers = step.get("layers")
    if isinstance(v, list) and v and all(isinstance(c, dict) for c in v):
        if len(v) > MAX_LIST:
            raise RecipeError(f"{where}: more than {MAX_LIST} cases")
        cases = []
        for i, case in enumerate(v):
            extra = sorted(set(case) - {"filter", "value"})
            if extra or "value" not in case:
                raise RecipeError(f'{where}[{i + 1}]: a case is {{filter = "…", value = …}}')
            flt = case.get("filter")
            if flt is not None and not isinstance(flt, str):
                raise RecipeError(f"{where}[{i + 1}]: filter must be a string")
            cases.append((flt, _value(case["value"], f"{where}[{i + 1}]", step_layers)))
        return Setting(tuple(cases))
    return Setting(((None, _value(v, where, step_layers)),))


def _size(v: Any, where: str) -> int:
    size: float = 0
    if isinstance(v, int) and not isinstance(v, bool):
        size = v
    elif isinstance(v, str) and len(v) <= 40:
        m = re.fullmatch(r"\s*(\d{1,15}(?:\.\d{1,15})?)\s*([kmg]i?b|b)?\s*", v.lower())
        if m:
            size = float(m.group(1)) * _UNITS[m.group(2) or ""]
    if not 1 <= size <= MAX_SHARD:
        raise RecipeError(f'{where}: expected a size like "5GB" or "2000MiB", got {_short(v)}')
    return int(size)
