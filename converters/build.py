"""`cattery build RECIPE.toml`: sources → merge → GGUF → quantized GGUFs → the model library.

A build recipe names its sources (local folders, or repos on the hub, downloaded into
the HF cache), optionally a merge of them (the `cattery merge` recipe, with source
names where paths would be), the GGUF's type, the quant types, and the prompt format
the results are chatted with:

    name = "chronolima-airo-grad-l2-13B"     # the folder and file names in the model library

    [sources]                                # a folder (relative to this file) or owner/repo
    chronos = "elinas/chronos-13b-v2"
    limarp = "lemonilia/limarp-llama2-v2"    # a PEFT adapter repo
    airoboros = "jondurbin/airoboros-l2-13b-gpt4-2.0"

    [merge]                                  # as `cattery merge` takes it; names from [sources]
    base = "chronos"
    [[merge.steps]]
    method = "lora"
    adapter = "limarp"
    weight = 0.25
    [[merge.steps]]
    method = "gradient"
    mode = "tensor"                          # BlockMerge_Gradient, as the seed model was made
    model = "airoboros"
    values = [0.9, 0.0]

    [gguf]
    outtype = "f16"                          # the GGUF made from the merge (or from `source`)
    # source = "chronos"                     # without [merge]: convert this source as it is
    keep = false                             # keep that GGUF beside the quantized ones

    [quantize]
    types = ["Q4_K_M", "Q5_K_M"]
    # imatrix = "imatrix.dat"

    [chat]
    format = "airoboros"                     # recorded for every result: used when it loads

Nothing is written under a final name until that file is complete. Before any work the
disk space for downloads and outputs is checked, and after the sources are local the
merge's peak memory; either short is one clear refusal.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import CatteryError, InputError
from app.progress import Progress
from app.resources import require_disk
from converters.partials import clean_leftovers, hold_folder
from converters.recipe_checks import GGUF_OPTIONS, gguf_options, is_folder, path_value, plain_name, read_recipe

KEYS = {"name", "sources", "merge", "gguf", "quantize", "chat"}
DISK_SLACK = 256 * 1000**2


class BuildError(InputError):
    """A build recipe that cannot be run as written: one line naming the file and the key."""


@dataclass
class BuildRecipe:
    path: Path
    name: str
    sources: dict[str, str]
    merge: dict[str, Any] | None
    source: str | None  # without a merge: the source converted as it is
    outtype: str = "f16"
    pre_tokenizer: str | None = None
    chat_format: str | None = None
    keep_gguf: bool = False
    quant_types: list[str] = field(default_factory=list)
    imatrix: Path | None = None
    format: str | None = None


MAX_SOURCES = 64
MAX_QUANT_TYPES = 32
TABLE_KEYS = {"gguf": (*GGUF_OPTIONS, "source", "keep"), "quantize": ("types", "imatrix"), "chat": ("format",)}


def load_build(path: Path) -> BuildRecipe:
    """The recipe, every value checked before anything is downloaded, merged or written."""
    path = Path(path)
    _text, data = read_recipe(path, BuildError)
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise BuildError(f"{path}: unknown key {unknown[0][:40]!r} (expected {', '.join(sorted(KEYS))})")
    if "name" not in data:
        raise BuildError(f'{path}: name = "…" is needed (a plain name: the folder of the results)')
    name = plain_name(data["name"], f"{path}: name", BuildError)
    sources = data.get("sources", {})
    if not isinstance(sources, dict) or not sources or not all(isinstance(v, str) for v in sources.values()):
        raise BuildError(f'{path}: [sources] needs at least one name = "folder or owner/repo"')
    if len(sources) > MAX_SOURCES:
        raise BuildError(f"{path}: [sources] lists more than {MAX_SOURCES} sources")
    for key, value in sources.items():
        _check_source(path, key, value)
    tables = {}
    for key, allowed in TABLE_KEYS.items():
        table = data.get(key, {})
        if not isinstance(table, dict):
            raise BuildError(f"{path}: [{key}] must be a table")
        extra = sorted(k for k in table if k not in allowed)
        if extra:
            raise BuildError(f"{path}: [{key}] has an unknown key {extra[0][:40]!r} (expected {', '.join(allowed)})")
        tables[key] = table
    gguf, quant, chat = tables["gguf"], tables["quantize"], tables["chat"]
    gguf_options({k: v for k, v in gguf.items() if k in GGUF_OPTIONS}, f"{path}: [gguf]", BuildError)
    keep = gguf.get("keep", False)
    if not isinstance(keep, bool):
        raise BuildError(f"{path}: [gguf] keep must be true or false")
    merge = data.get("merge")
    source = gguf.get("source")
    if source is not None and (not isinstance(source, str) or source not in sources):
        raise BuildError(f'{path}: [gguf] source = "name" must name one of [sources]')
    if merge is None:
        if source is None and len(sources) == 1:
            source = next(iter(sources))
        if source not in sources:
            raise BuildError(f'{path}: without [merge], [gguf] source = "name" says which source to convert')
    elif not isinstance(merge, dict):
        raise BuildError(f"{path}: [merge] must be a table")
    else:
        _check_merge(path, merge, sources)
    types = quant.get("types", [])
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types) or len(types) > MAX_QUANT_TYPES:
        raise BuildError(f"{path}: [quantize] types must be a list of type names")
    from converters.quant_types import lookup

    for t in types:
        lookup(t)  # an unknown type is refused before anything starts
    fmt = chat.get("format")
    if fmt is not None:
        if not isinstance(fmt, str):
            raise BuildError(f"{path}: [chat] format must be the name of a prompt format")
        from app.prompt.formats import GGUF, get_format

        if fmt != GGUF:
            get_format(fmt)
    imatrix = quant.get("imatrix")
    return BuildRecipe(
        path=path,
        name=name,
        sources=dict(sources),
        merge=merge,
        source=source,
        outtype=str(gguf.get("outtype", "f16")).lower(),
        pre_tokenizer=gguf.get("pre_tokenizer"),
        chat_format=gguf.get("chat_format"),
        keep_gguf=keep,
        quant_types=list(types),
        imatrix=path_value(imatrix, f"{path}: [quantize] imatrix", BuildError, path.parent) if imatrix else None,
        format=fmt,
    )


def _check_source(path: Path, key: str, value: str) -> None:
    """A source is a folder (its path checked as text) or owner/repo; which one, decided as `_is_local` decides."""
    where = f"{path}: source {key[:40]}"
    local = path_value(value, where, BuildError, path.parent)
    if is_folder(local) or value.startswith((".", "/", "~")):
        return
    from app.hub.names import parse_ref

    try:
        ref = parse_ref(value)
    except (CatteryError, ValueError):
        ref = None
    if ref is None:
        raise BuildError(f"{where} = {value[:80]!r} is neither a folder nor owner/repo")


def _check_merge(path: Path, merge: dict[str, Any], sources: dict[str, str]) -> None:
    """The [merge] table parsed now, before any download, with every model named checked against
    [sources] (the folders themselves are known only once the sources are local)."""
    from converters.merge_recipe import parse_recipe

    def resolve(value: str) -> Path:
        if value not in sources:
            local = path_value(value, f"{path} [merge]", BuildError, path.parent)
            if not is_folder(local):
                raise BuildError(f"{path}: [merge] names {value[:80]!r}, which is not in [sources]")
        return path.parent  # a folder that exists: the real one is checked when the merge runs

    parse_recipe(dict(merge), path.parent, source=f"{path} [merge]", resolve=resolve)


@dataclass
class BuildResult:
    folder: Path
    outputs: list[Path]
    notes: list[str]
    seconds: float

    @property
    def chat_model(self) -> Path | None:
        """The file to chat with: the first quantized one; a kept F16/BF16/F32 is for quantizing again."""
        quantized = [p for p in self.outputs if not p.stem.upper().endswith((".F16", ".F32", ".BF16"))]
        return (quantized or self.outputs or [None])[0]


def _is_local(recipe: BuildRecipe, value: str) -> Path | None:
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = recipe.path.parent / candidate
    if candidate.is_dir() or value.startswith((".", "/", "~")):
        return candidate
    return None


def _hub_plans(recipe: BuildRecipe) -> dict[str, Any]:
    from app.hub.download import plan_download
    from app.hub.names import parse_ref

    plans = {}
    for name, value in recipe.sources.items():
        if _is_local(recipe, value) is not None:
            continue
        ref = parse_ref(value)
        if ref is None:
            raise BuildError(f"{recipe.path}: source {name} = {value!r} is neither a folder nor owner/repo")
        plan = plan_download(ref)
        if plan.kind == "gguf":
            raise BuildError(f"{recipe.path}: source {name} ({value}) is a GGUF repo; a build starts from checkpoints")
        plans[name] = plan
    return plans


def _estimate_outputs(recipe: BuildRecipe, weights_bytes: int, n_params: int) -> int:
    from converters.quant_types import lookup

    bits = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "auto": 16}.get(recipe.outtype, 16)
    total = int(n_params * bits / 8) if n_params else weights_bytes
    for t in recipe.quant_types:
        total += int(n_params * lookup(t).bpw / 8) if n_params else weights_bytes // 2
    return total


def run_build(
    recipe_path: Path,
    models_dir: Path,
    *,
    progress: Progress | None = None,
    on_stage: Callable[[str], None] | None = None,
    force: bool = False,
) -> BuildResult:
    """Run the whole recipe; the results are GGUF files in `models_dir/<name>/`."""
    start = time.monotonic()
    recipe = load_build(recipe_path)
    stage = on_stage or (lambda _text: None)
    notes: list[str] = []
    final_dir = Path(models_dir) / recipe.name
    clean_leftovers(final_dir)  # what a killed build of this recipe left
    if final_dir.exists() and any(final_dir.iterdir()) and not force:
        raise BuildError(f"{final_dir}: already has results of this recipe; remove them or pass --force")

    # 1. Disk for downloads and outputs, before anything is fetched or written.
    plans = _hub_plans(recipe)
    download_bytes = sum(p.size for p in plans.values())
    weights = download_bytes + sum(_local_weight_bytes(recipe, v) for v in recipe.sources.values())
    n_params = weights // 2  # checkpoints are 16-bit, as good as exact for a disk check
    outputs = _estimate_outputs(recipe, weights, n_params)
    from app.hub.download import cache_dir, download

    require_disk(final_dir.parent, outputs + DISK_SLACK, f"the results of {recipe.path.name}")
    if download_bytes:
        require_disk(cache_dir(), download_bytes + DISK_SLACK, f"the sources of {recipe.path.name}")

    # 2. The sources, local.
    folders: dict[str, Path] = {}
    for name, value in recipe.sources.items():
        local = _is_local(recipe, value)
        if local is not None:
            if not local.is_dir():
                raise BuildError(f"{recipe.path}: source {name}: {local} is not a folder")
            folders[name] = local
            continue
        plan = plans[name]
        stage(f"downloading {plan.label}")

        def dl_progress(p: Any) -> None:
            if progress is not None:
                progress(0, 0, p.file, p.done, p.total)  # bytes only: files differ too much in size

        paths = download(plan, progress=dl_progress)
        folders[name] = paths[0].parent

    final_dir.mkdir(parents=True, exist_ok=True)
    held = hold_folder(final_dir, recipe.name, unique=True)
    work = held.path
    made: list[Path] = []
    try:
        # 3. The GGUF: a merge written straight into it, or a source converted.
        outtype_name = recipe.outtype.upper() if recipe.outtype != "auto" else "F16"
        gguf_path = work / f"{recipe.name}.{outtype_name}.gguf"
        gguf_options = {
            "outtype": recipe.outtype,
            "pre_tokenizer": recipe.pre_tokenizer,
            "chat_format": recipe.chat_format,
        }
        if recipe.merge is not None:
            stage("merging into GGUF")
            from converters.merge import merge
            from converters.merge_recipe import parse_recipe

            def resolve(value: str) -> Path:
                if value in folders:
                    return folders[value]
                local = _is_local(recipe, value)
                if local is None:
                    raise BuildError(f"{recipe.path}: [merge] names {value!r}, which is not in [sources]")
                return local

            merge_recipe = parse_recipe(
                dict(recipe.merge), recipe.path.parent, source=f"{recipe.path} [merge]", resolve=resolve
            )
            result = merge(merge_recipe, gguf_path, progress=progress, gguf=gguf_options)
            notes += list(result.notes)
        else:
            stage(f"converting {recipe.source}")
            from converters.hf_to_gguf import convert

            assert recipe.source is not None
            report = convert(folders[recipe.source], gguf_path, progress=progress, **gguf_options)
            notes += list(getattr(report, "notes", []))

        # 4. The quant types.
        from converters.quantize import quantize

        for qtype in recipe.quant_types:
            stage(f"quantizing to {qtype}")
            out = work / f"{recipe.name}.{qtype.upper()}.gguf"
            quantize(gguf_path, out, qtype, imatrix=recipe.imatrix, progress=progress)
            made.append(out)
        if recipe.keep_gguf or not recipe.quant_types:
            made.insert(0, gguf_path)

        # 5. Into the library, under their final names.
        finals = []
        for path in made:
            target = final_dir / path.name
            if target.exists() and force:
                target.unlink()
            path.replace(target)
            finals.append(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        held.release()
    return BuildResult(final_dir, finals, notes, time.monotonic() - start)


def _local_weight_bytes(recipe: BuildRecipe, value: str) -> int:
    local = _is_local(recipe, value)
    if local is None or not local.is_dir():
        return 0
    return sum(p.stat().st_size for p in local.glob("*.safetensors"))
