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
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import CatteryError
from app.progress import Progress
from app.resources import require_disk

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KEYS = {"name", "sources", "merge", "gguf", "quantize", "chat"}
DISK_SLACK = 256 * 1000**2


class BuildError(CatteryError):
    pass


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


def load_build(path: Path) -> BuildRecipe:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise BuildError(f"{path}: unknown key {unknown[0]!r} (expected {', '.join(sorted(KEYS))})")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise BuildError(f'{path}: name = "…" is needed (a plain name: the folder of the results)')
    sources = data.get("sources", {})
    if not isinstance(sources, dict) or not sources or not all(isinstance(v, str) for v in sources.values()):
        raise BuildError(f'{path}: [sources] needs at least one name = "folder or owner/repo"')
    gguf = data.get("gguf", {})
    quant = data.get("quantize", {})
    chat = data.get("chat", {})
    for table, key in ((gguf, "gguf"), (quant, "quantize"), (chat, "chat")):
        if not isinstance(table, dict):
            raise BuildError(f"{path}: [{key}] must be a table")
    merge = data.get("merge")
    source = gguf.get("source")
    if merge is None:
        if source is None and len(sources) == 1:
            source = next(iter(sources))
        if source not in sources:
            raise BuildError(f'{path}: without [merge], [gguf] source = "name" says which source to convert')
    elif not isinstance(merge, dict):
        raise BuildError(f"{path}: [merge] must be a table")
    types = quant.get("types", [])
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise BuildError(f"{path}: [quantize] types must be a list of type names")
    from converters.quant_types import lookup

    for t in types:
        lookup(t)  # an unknown type is refused before anything starts
    fmt = chat.get("format")
    if fmt is not None:
        from app.prompt.formats import GGUF, get_format

        if fmt != GGUF:
            get_format(fmt)
    imatrix = quant.get("imatrix")
    return BuildRecipe(
        path=path,
        name=name.strip(),
        sources=dict(sources),
        merge=merge,
        source=source,
        outtype=str(gguf.get("outtype", "f16")),
        pre_tokenizer=gguf.get("pre_tokenizer"),
        chat_format=gguf.get("chat_format"),
        keep_gguf=bool(gguf.get("keep", False)),
        quant_types=list(types),
        imatrix=(path.parent / imatrix) if imatrix else None,
        format=fmt,
    )


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
    work = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.", dir=final_dir))
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
    return BuildResult(final_dir, finals, notes, time.monotonic() - start)


def _local_weight_bytes(recipe: BuildRecipe, value: str) -> int:
    local = _is_local(recipe, value)
    if local is None or not local.is_dir():
        return 0
    return sum(p.stat().st_size for p in local.glob("*.safetensors"))
