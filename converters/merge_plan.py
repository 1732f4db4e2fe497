"""A merge as a lazy checkpoint: every output tensor planned first, each computed only when asked.

`MergedModel(recipe)` opens the inputs (headers only), decides the output's names, shapes
and types, and the parameter every step uses for every tensor, so that a bad recipe fails
before any work and a dry run can print exactly what each tensor will get. `f32(name)`
then reads that tensor from each input (and nothing else), runs the steps on it and returns
the result; a writer frees it before asking for the next. It is shaped like a
`converters.checkpoint.Checkpoint` (`config`, `names()`, `tensors[name].dtype/.shape`,
`f32(name)`, `tokenizer_files()`), so the GGUF converter takes it as it takes a folder.

Merging happens in Hugging Face space: Q/K rows are permuted later, by the converter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.checkpoint import TOKENIZER_FILES, Checkpoint, CheckpointError, TensorPlan
from converters.config_check import check_shapes
from converters.gguf_metadata import hparams
from converters.merge_io import FLOAT_TYPES, read_f32
from converters.merge_lora import LoraAdapter
from converters.merge_methods import blockmerge_ratios, blockmerge_vocab_, lerp_, slerp_, weighted_sum_
from converters.merge_order import EMBEDDING, LM_HEAD, gradient_t, is_buffer, is_vocab_tensor, module_order
from converters.merge_recipe import (
    LayerGradientStep,
    LinearStep,
    LoraStep,
    Recipe,
    RecipeError,
    Setting,
    SlerpStep,
    TensorGradientStep,
)

Shape = tuple[int, ...]
TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class _Context:
    """What every step needs: the inputs, the model's layout, where to put notes."""

    def __init__(self, recipe: Recipe, models: dict[Path, Checkpoint], n_layers: int, tied: bool) -> None:
        self.recipe = recipe
        self.models = models
        self.n_layers = n_layers
        self.tied = tied
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def label(self, path: Path) -> str:
        return path.name or str(path)


def _source_name(ck: Checkpoint, name: str) -> str | None:
    """The tensor of `ck` that stands for `name`: itself, or the embeddings for a tied lm_head."""
    if name in ck.tensors:
        return name
    if name == LM_HEAD and EMBEDDING in ck.tensors:
        return EMBEDDING
    return None


class _StepRun:
    """One step planned over every tensor: `params[name]` is what the tensor gets (None: unchanged)."""

    title: str
    params: dict[str, Any]

    def apply(self, name: str, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run_notes(self) -> list[str]:
        """Notes known only once tensors are computed."""
        return []

    def describe(self, name: str) -> str:
        p = self.params.get(name)
        if p is None:
            return "-"
        if isinstance(p, float):
            return _fmt(p)
        return " ".join(_fmt(v) for v in p) if isinstance(p, list | tuple) else str(p)


class _LoraRun(_StepRun):
    def __init__(self, step: LoraStep, ctx: _Context, names: list[str], shapes: dict[str, Shape], index: int) -> None:
        self.adapter = LoraAdapter.open(step.adapter)
        self.weight = step.weight
        self.title = f"{index}: lora {ctx.label(step.adapter)} ×{_fmt(step.weight)}"
        label = f"{ctx.recipe.source}: steps[{index}] (lora)"
        adapter_shapes = self.adapter.shapes()
        missing = sorted(t for t in [*self.adapter.modules, *self.adapter.replacements] if t not in shapes)
        if missing:
            raise RecipeError(f"{label}: {step.adapter} changes {missing[0]}, which the model does not have")
        self.params = {}
        for name in names:
            parts = []
            if name in self.adapter.replacements:  # loaded over the base's first, as PEFT loads it
                new = adapter_shapes[self.adapter.replacements[name]]
                if new != shapes[name]:
                    if not (is_vocab_tensor(name) and len(new) == 2 and new[1:] == shapes[name][1:]):
                        raise RecipeError(f"{label}: {step.adapter} replaces {name} {shapes[name]} with {new}")
                    ctx.note(f"vocabulary: {name} replaced by the adapter's, {shapes[name][0]} → {new[0]} rows")
                shapes[name] = new
                parts.append("replaced")
            if name in self.adapter.modules:
                m = self.adapter.modules[name]
                delta = m.delta_shape(adapter_shapes)
                if delta != shapes[name]:
                    raise RecipeError(
                        f"{label}: {step.adapter}: the LoRA for {name} is {delta} but the tensor is {shapes[name]} "
                        "(an adapter for another model?)"
                    )
                parts.append(f"+{_fmt(step.weight)}·{_fmt(m.scale)}·BA")
            if parts:
                self.params[name] = " ".join(parts)

    def apply(self, name: str, x: np.ndarray) -> np.ndarray:
        if name in self.adapter.replacements:
            x = self.adapter.replacement(name)
        if name in self.adapter.modules:
            x += self.adapter.delta(name, self.weight)
        return x


class _WithModels(_StepRun):
    """A step that blends the model so far with other checkpoints, tensor by tensor."""

    def _open(self, ctx: _Context, paths: Sequence[Path], names: list[str], label: str) -> None:
        self.ctx = ctx
        self.others = [ctx.models[p] for p in paths]
        for path, ck in zip(paths, self.others, strict=True):
            n = ck.config.get("num_hidden_layers")
            if n is not None and int(n) != ctx.n_layers:
                raise RecipeError(f"{label}: {path} has {n} layers, the model so far {ctx.n_layers}")
            for name in names:
                if _source_name(ck, name) is None:
                    raise RecipeError(f"{label}: {path} has no tensor {name}")
            extra = [n for n in ck.tensors if n not in names and not is_buffer(n) and not (n == LM_HEAD and ctx.tied)]
            if extra:
                ctx.note(f"{ctx.label(path)}: {len(extra)} tensors the model so far lacks are ignored ({extra[0]}, …)")
            if ctx.tied and LM_HEAD in ck.tensors:
                ctx.note(
                    f"{ctx.label(path)}: its lm_head.weight is ignored (the model so far ties it to the embeddings)"
                )
            if not ctx.tied and LM_HEAD not in ck.tensors:
                ctx.note(f"{ctx.label(path)}: ties lm_head to its embeddings; they stand in for its lm_head.weight")

    def _read(self, i: int, name: str) -> np.ndarray:
        ck = self.others[i]
        source = _source_name(ck, name)
        assert source is not None
        return read_f32(ck, source)

    def _common_shapes(self, name: str, shapes: dict[str, Shape], label: str) -> None:
        """Embeddings of different sizes: the common rows, as mergekit's --unsafe-truncate-embeddings keeps them
        (mergekit 0.1.5 refuses without it, or maps tokens with a tokenizer section Cattery does not have)."""
        mine = shapes[name]
        theirs = [ck.tensors[_source_name(ck, name) or name].shape for ck in self.others]
        if all(s == mine for s in theirs):
            return
        if not (is_vocab_tensor(name) and all(len(s) == 2 == len(mine) for s in theirs)):
            raise RecipeError(f"{label}: {name} is {mine} here but {theirs[0]} in another model")
        common = tuple(min(s[d] for s in [mine, *theirs]) for d in range(2))
        sizes = ", ".join(str(s[0]) for s in [mine, *theirs])
        self.ctx.note(
            f"vocabulary: {name} has {sizes} rows; the common {common[0]} are merged "
            "(as mergekit --unsafe-truncate-embeddings does)"
        )
        shapes[name] = common
        self.crop[name] = common

    def _cropped(self, name: str, x: np.ndarray) -> np.ndarray:
        shape = self.crop.get(name)
        if shape is None or x.shape == shape:
            return x
        part = x[: shape[0], : shape[1]]
        return part if part.flags.c_contiguous else np.ascontiguousarray(part)


class _LinearRun(_WithModels):
    def __init__(self, step: LinearStep, ctx: _Context, names: list[str], shapes: dict[str, Shape], index: int) -> None:
        label = f"{ctx.recipe.source}: steps[{index}] (linear)"
        self.title = f"{index}: linear with {', '.join(ctx.label(p) for p in step.models)}"
        self.crop: dict[str, Shape] = {}
        self._open(ctx, step.models, names, label)
        self.normalize = step.normalize
        self.params = {}
        for name in names:
            t = gradient_t(name, ctx.n_layers)
            weights = []
            for i, s in enumerate(step.weights):
                w = s.value(name, t, ctx.n_layers)
                if w is None:
                    raise RecipeError(f"{label}: weights[{i + 1}] has no value for {name} (no filter matches it)")
                weights.append(w)
            if step.normalize and sum(weights) == 0:
                raise RecipeError(f"{label}: the weights for {name} add up to 0 and cannot be normalised")
            self.params[name] = weights
            self._common_shapes(name, shapes, label)

    def apply(self, name: str, x: np.ndarray) -> np.ndarray:
        tensors = [self._cropped(name, x)]
        for i in range(len(self.others)):
            tensors.append(self._cropped(name, self._read(i, name)))
        return weighted_sum_(tensors, self.params[name], self.normalize)


class _LayerGradientRun(_WithModels):
    def __init__(
        self, step: LayerGradientStep, ctx: _Context, names: list[str], shapes: dict[str, Shape], index: int
    ) -> None:
        label = f"{ctx.recipe.source}: steps[{index}] (gradient, layer)"
        self.title = f"{index}: gradient (layer) with {ctx.label(step.model)}"
        self.crop = {}
        self._open(ctx, [step.model], names, label)
        self.params = _per_tensor(step.values, names, ctx.n_layers, label, "values")
        for name in names:
            self._common_shapes(name, shapes, label)

    def apply(self, name: str, x: np.ndarray) -> np.ndarray:
        """(1 − v)·x + v·other, rounded as mergekit's linear merge of the two with those weights rounds it."""
        v = self.params[name]
        tensors = [self._cropped(name, x), self._cropped(name, self._read(0, name))]
        return weighted_sum_(tensors, [1.0 - v, v], normalize=False)


class _SlerpRun(_WithModels):
    def __init__(self, step: SlerpStep, ctx: _Context, names: list[str], shapes: dict[str, Shape], index: int) -> None:
        label = f"{ctx.recipe.source}: steps[{index}] (slerp)"
        self.title = f"{index}: slerp with {ctx.label(step.model)}"
        self.crop = {}
        self._open(ctx, [step.model], names, label)
        self.params = _per_tensor(step.t, names, ctx.n_layers, label, "t")
        for name in names:
            self._common_shapes(name, shapes, label)
        self.lerped: list[str] = []
        self.index = index

    def apply(self, name: str, x: np.ndarray) -> np.ndarray:
        out, lerped = slerp_(self.params[name], self._cropped(name, x), self._cropped(name, self._read(0, name)))
        if lerped:
            self.lerped.append(name)
        return out

    def run_notes(self) -> list[str]:
        if not self.lerped:
            return []
        return [
            f"slerp (step {self.index}): {len(self.lerped)} nearly parallel tensors interpolated linearly "
            f"({self.lerped[0]}{', …' if len(self.lerped) > 1 else ''})"
        ]


class _TensorGradientRun(_WithModels):
    """BlockMerge_Gradient: ratios spread over the state dict of the model so far, in module order."""

    def __init__(
        self, step: TensorGradientStep, ctx: _Context, names: list[str], shapes: dict[str, Shape], index: int
    ) -> None:
        label = f"{ctx.recipe.source}: steps[{index}] (gradient, tensor)"
        self.title = f"{index}: gradient (tensor) with {ctx.label(step.model)}"
        self.crop = {}
        self._open(ctx, [step.model], names, label)
        # a tied model's state dict still lists lm_head.weight (the same matrix as the embeddings)
        keys = module_order([*names, LM_HEAD] if ctx.tied and LM_HEAD not in names else names)
        if step.layer_only:
            keys = [k for k in keys if "layer" in k]
        elif step.no_layers:
            keys = [k for k in keys if "layer" not in k]
        if step.filter:
            keys = [k for k in keys if step.filter in k]
        ratios = dict(zip(keys, blockmerge_ratios(len(keys), step.values), strict=True))
        self.params = {n: ratios.get(n) for n in names}
        self.shared_from_head = ctx.tied and EMBEDDING in names
        if self.shared_from_head:
            # load_state_dict copies lm_head.weight into the shared matrix last, so its blend is what stays
            self.params[EMBEDDING] = ratios.get(LM_HEAD)
            ctx.note(
                "tied embeddings: as with BlockMerge_Gradient, the shared matrix gets lm_head.weight's ratio "
                "(it is loaded last)"
            )
        for name in names:
            if self.params[name] is None:
                continue
            source = self.others[0].tensors[self._other_name(name)].shape
            mine = shapes[name]
            if source == mine:
                continue
            if is_vocab_tensor(name) and len(mine) == len(source) == 2 and mine[1] == source[1]:
                kept = " (its extra rows kept)" if mine[0] > source[0] else ""
                ctx.note(
                    f"vocabulary: {name} has {mine[0]} rows here, {source[0]} in {ctx.label(step.model)}; the first "
                    f"{min(mine[0], source[0])} are blended and the size of the model so far kept{kept} "
                    "(as BlockMerge_Gradient does)"
                )
                continue
            raise RecipeError(f"{label}: {name} is {mine} here but {source} in {step.model}")

    def _other_name(self, name: str) -> str:
        ck = self.others[0]
        if name == EMBEDDING and self.shared_from_head:
            return LM_HEAD if LM_HEAD in ck.tensors else EMBEDDING
        return _source_name(ck, name) or name

    def apply(self, name: str, x: np.ndarray) -> np.ndarray:
        ratio = self.params.get(name)
        if ratio is None:
            return x
        other = read_f32(self.others[0], self._other_name(name))
        if is_vocab_tensor(name):
            return blockmerge_vocab_(x, other, ratio)
        return lerp_(x, other, ratio)


def _per_tensor(setting: Setting, names: list[str], n_layers: int, label: str, key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        v = setting.value(name, gradient_t(name, n_layers), n_layers)
        if v is None:
            raise RecipeError(f"{label}: {key} has no value for {name} (no filter matches it)")
        out[name] = v
    return out


_RUNS: dict[type, type] = {
    LoraStep: _LoraRun,
    LinearStep: _LinearRun,
    LayerGradientStep: _LayerGradientRun,
    TensorGradientStep: _TensorGradientRun,
    SlerpStep: _SlerpRun,
}


class MergedModel:
    """The merge's output as a checkpoint whose tensors are computed on demand."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        models = {p: Checkpoint.open(p) for p in recipe.models()}
        for path, ck in models.items():  # each input is a sound llama whose config matches its tensors
            hp = hparams(ck.config, str(path))
            check_shapes(hp, {n: r.shape for n, r in ck.tensors.items()}, str(path))
        base = models[recipe.base]
        self.base = base
        n_layers = base.config.get("num_hidden_layers")
        if not isinstance(n_layers, int) or n_layers < 1:
            raise CheckpointError(f"{recipe.base / 'config.json'}: no num_hidden_layers (is it a llama model?)")
        tied = LM_HEAD not in base.tensors
        ctx = self._ctx = _Context(recipe, models, n_layers, tied)
        buffers = [n for n in base.names() if is_buffer(n)]
        if buffers:
            ctx.note(f"{len(buffers)} rotary_emb.inv_freq buffers left out (derived, not part of the model's weights)")
        names = [n for n in module_order(base.names()) if not is_buffer(n)]
        for n in names:
            if base.tensors[n].dtype not in FLOAT_TYPES:
                raise CheckpointError(f"{base.tensors[n].file}: tensor {n} is {base.tensors[n].dtype}, not a float")
        shapes: dict[str, Shape] = {n: base.tensors[n].shape for n in names}
        self.steps: list[_StepRun] = [
            _RUNS[type(step)](step, ctx, names, shapes, i + 1) for i, step in enumerate(recipe.steps)
        ]
        if not tied and EMBEDDING in shapes and shapes[EMBEDDING][0] != shapes[LM_HEAD][0]:
            raise RecipeError(
                f"{recipe.source}: the merge leaves {shapes[EMBEDDING][0]} embedding rows but "
                f"{shapes[LM_HEAD][0]} lm_head rows"
            )
        self._names = names
        self.tensors: dict[str, TensorPlan] = {
            n: TensorPlan(n, recipe.dtype or base.tensors[n].dtype, shapes[n]) for n in names
        }
        self.config: dict[str, Any] = dict(base.config)
        if EMBEDDING in shapes:
            rows = shapes[EMBEDDING][0]
            if self.config.get("vocab_size") != rows:
                if "vocab_size" in self.config:
                    ctx.note(f"vocabulary: vocab_size {self.config['vocab_size']} → {rows} in config.json")
                self.config["vocab_size"] = rows
        if recipe.dtype:
            self.config["torch_dtype"] = TORCH_DTYPES[recipe.dtype]
        self.folder = recipe.tokenizer or recipe.base  # where the tokenizer files are
        if not self.tokenizer_files():
            where = "tokenizer" if recipe.tokenizer else "base"
            raise RecipeError(
                f"{self.folder}: no tokenizer files (tokenizer.json, tokenizer.model, …): a merged model must carry "
                f"them; name a folder that has them{' with tokenizer = …' if where == 'base' else ''}"
            )

    @property
    def notes(self) -> list[str]:
        """What the merge decided that a user should know (vocabulary sizes, fallbacks)."""
        return [*self._ctx.notes, *(n for s in self.steps for n in s.run_notes())]

    @property
    def n_layers(self) -> int:
        return self._ctx.n_layers

    def names(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def f32(self, name: str) -> np.ndarray:
        """The merged tensor, computed now from that tensor of each input alone."""
        x = read_f32(self.base, name)
        for step in self.steps:
            x = step.apply(name, x)
        return x

    def tokenizer_files(self) -> list[Path]:
        """The tokenizer files of the folder they come from, each its own (they are copied into the output)."""
        from converters.untrusted_files import own_file

        return [p for n in TOKENIZER_FILES if (p := own_file(self.folder / n, self.folder, required=False))]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def largest_f32(self) -> int:
        """Bytes of the largest tensor in float32, read or written: what peak memory scales with."""
        sizes = [4 * int(np.prod(t.shape)) for t in self.tensors.values()]
        for ck in self._ctx.models.values():
            sizes += [4 * r.n_elements for r in ck.tensors.values()]
        return max(sizes, default=0)

    def plan_lines(self) -> list[str]:
        """The plan as a table: each tensor, its shape and type, and what every step gives it."""
        lines = ["steps: " + "; ".join(s.title for s in self.steps)]
        width = max((len(n) for n in self._names), default=0)
        for n in self._names:
            t = self.tensors[n]
            shape = "×".join(str(d) for d in t.shape)
            parts = " | ".join(s.describe(n) for s in self.steps)
            lines.append(f"{n:<{width}}  {shape:>12} {t.dtype:<4}  {parts}")
        return lines

    def close(self) -> None:
        for ck in self._ctx.models.values():
            ck.close()
