"""`cattery merge`: run a merge recipe (converters/merge_recipe.py) into a checkpoint folder or a GGUF file.

Streaming: the output's tensors are planned first (converters/merge_plan.py), then
computed one at a time from that tensor of each input, written, and freed, so memory
stays near a few times the largest tensor whatever the model's size. A folder output
gets sharded safetensors with an index, config.json, the tokenizer files and the recipe;
an output ending in .gguf is converted as it is merged, with no checkpoint in between.

Nothing appears under the output's name until it is complete: a folder is built under a
hidden temporary name beside it and renamed into place, a GGUF file likewise.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import CatteryError
from app.progress import Progress, TensorCounter
from app.resources import require_disk, require_memory
from app.units import fmt_size
from converters.checkpoint import ShardedWriter
from converters.merge_card import card_folder, merged_config, merged_name, write_card
from converters.merge_plan import MergedModel
from converters.merge_recipe import Recipe, load_recipe
from converters.partials import clean_leftovers, hold_folder, partial_name
from converters.recipe_checks import check_gguf_values

MEMORY_SLACK = 300 * 1000**2  # Python, numpy and the libraries, beyond the tensors themselves


@dataclass
class MergeResult:
    path: Path
    tensors: int
    bytes: int
    notes: list[str] = field(default_factory=list)
    conversion: Any = None  # the converter's report, for a GGUF output

    def summary(self) -> str:
        if self.conversion is not None and hasattr(self.conversion, "summary"):
            return str(self.conversion.summary())
        return f"wrote {self.path} ({self.tensors} tensors, {fmt_size(self.bytes)})"


def run_merge(recipe: Path, out: Path, *, progress: Progress | None = None, force: bool = False, **gguf: Any) -> Path:
    """Merge as the recipe file says into `out` (a folder, or a .gguf file); the path written.

    Keyword arguments (outtype, pre_tokenizer, chat_format) override the recipe's [gguf] table.
    """
    return merge(load_recipe(Path(recipe)), Path(out), progress=progress, force=force, gguf=gguf).path


def plan_merge(recipe: Recipe) -> MergedModel:
    """The merge planned (every tensor's shape, type and parameters), nothing computed yet."""
    return MergedModel(recipe)


def peak_memory(model: MergedModel) -> int:
    """The most memory the merge should take: a few tensors at once, as merge_plan computes them.

    At most three float32 tensors are alive while one is computed (the result, the tensor
    being read, a LoRA delta); a 16-bit output adds its words (rounded a chunk at a time).
    """
    narrow = any(t.dtype in ("BF16", "F16") for t in model.tensors.values())
    return 3 * model.largest_f32 + (model.largest_f32 // 2 if narrow else 0) + MEMORY_SLACK


def merge(
    recipe: Recipe,
    out: Path,
    *,
    progress: Progress | None = None,
    force: bool = False,
    gguf: dict[str, Any] | None = None,
) -> MergeResult:
    out = Path(out)
    to_gguf = out.suffix.lower() == ".gguf"
    _check_output(recipe, out, force)
    model = plan_merge(recipe)
    conversion = None
    try:
        # a GGUF's size depends on its type: the converter checks the disk itself
        _check_resources(out, 0 if to_gguf else model.total_bytes, peak_memory(model))
        if to_gguf:
            conversion = _write_gguf(model, out, gguf_settings(recipe, gguf), progress)
        else:
            _write_folder(model, out, progress)
    finally:
        model.close()
    return MergeResult(out, len(model.tensors), model.total_bytes, model.notes, conversion)


def gguf_settings(recipe: Recipe, given: dict[str, Any] | None) -> dict[str, Any]:
    """The recipe's [gguf] table, with each option the caller gave (not None) in its place.

    A command line passes every option, None where the user gave none: those must not
    erase what the recipe says.
    """
    chosen = {k: v for k, v in (given or {}).items() if v is not None}
    check_gguf_values(chosen, "GGUF options", CatteryError)
    return {k: v for k, v in {**recipe.gguf, **chosen}.items() if v is not None}


def _inputs(recipe: Recipe) -> list[Path]:
    return [*recipe.models(), *recipe.adapters(), *([recipe.tokenizer] if recipe.tokenizer else [])]


def _check_output(recipe: Recipe, out: Path, force: bool) -> None:
    target = out.resolve()
    for p in _inputs(recipe):
        src = p.resolve()
        if target == src or src.is_relative_to(target):
            raise CatteryError(f"{out}: writing there would replace the input {p}; choose another path")
    if out.exists() and not force and not (out.is_dir() and not any(out.iterdir())):
        raise CatteryError(f"{out}: already exists; remove it or pass --force to replace it")


def _check_resources(out: Path, disk: int, memory: int) -> None:
    if disk:
        require_disk(out.parent, disk, f"the merge into {out}")
    require_memory(memory, f"the merge into {out} (a few of its largest tensors at once)")


def _replace(tmp: Path, out: Path) -> None:
    """Put the finished output in place, replacing what was there (only asked for with --force)."""
    if out.is_dir() and not out.is_symlink():
        old = out.with_name(partial_name(out.name, "old"))  # found and removed by a later run if this one dies
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.exists() or out.is_symlink():
            out.unlink()
        os.replace(tmp, out)


def _write_folder(model: MergedModel, out: Path, progress: Progress | None) -> None:
    final = out.resolve()
    names = model.names()
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(final.parent)  # what a killed merge into this folder left
    held = hold_folder(final.parent, final.name)
    tmp = held.path
    try:
        (tmp / "config.json").write_text(json.dumps(merged_config(model.config), indent=2) + "\n", encoding="utf-8")
        for f in model.tokenizer_files():
            shutil.copyfile(f, tmp / f.name)
        write_card(tmp, model.recipe, merged_name(model.recipe, out))
        if model.recipe.text is not None:
            (tmp / "merge_recipe.toml").write_text(model.recipe.text, encoding="utf-8")
        plan = [model.tensors[n] for n in names]
        counter = TensorCounter(progress, [t.nbytes for t in plan])
        with ShardedWriter(tmp, plan, max_shard=model.recipe.shard_size, metadata={"merged_by": "cattery"}) as w:
            for name in names:
                x = model.f32(name)
                w.write(name, x)
                del x
                counter.step(name)
            w.close()
        _replace(tmp, final)
        held.release()
    except OSError as exc:
        held.remove()
        raise CatteryError(f"{out}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        held.remove()
        raise


def _write_gguf(model: MergedModel, out: Path, options: dict[str, Any], progress: Progress | None) -> Any:
    """Convert as the merge runs: the converter asks for each merged tensor in turn and writes it."""
    try:
        from converters.hf_to_gguf import convert_source
    except ImportError:
        raise CatteryError(
            f"{out}: writing a merge straight to GGUF needs the converter (converters/hf_to_gguf.py); "
            "merge into a folder and run `cattery convert` on it"
        ) from None
    name = merged_name(model.recipe, out)
    generation = next((f for f in model.tokenizer_files() if f.name == "generation_config.json"), None)
    try:
        with card_folder(model.recipe, name, model.config, generation) as card:
            return convert_source(model, model.folder, out, progress=progress, card_dir=card, **options)
    except OSError as exc:
        raise CatteryError(f"{out}: cannot write: {exc.strerror or exc}") from None
