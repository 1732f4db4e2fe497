"""The model card (README.md) of a merged model, and the folder the GGUF converter reads it from.

llama.cpp's converter takes general.* (name, license, languages, base models, tags) from
the model card, config.json's `_name_or_path` and the folder's name, in that order. A
merge is none of its inputs, so the card says what it is: its name, the models it was
made from (`base_model`, as Hugging Face lists merges), the base's license and languages
(a merge is bound by its base's terms), and the recipe. The base's `_name_or_path` is
dropped from the merged config, or the converter would name the merge after its base.

A merge written straight into GGUF reads the same card from a temporary folder named as
a folder output would be, so that converting a merged folder and merging into GGUF give
the same metadata, byte for byte.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from converters.merge_recipe import Recipe


def merged_name(recipe: Recipe, out: Path) -> str:
    """The recipe's name, else the output's: a folder's name, a GGUF's stem without its type."""
    if recipe.name:
        return recipe.name.strip()
    if out.suffix.lower() != ".gguf":
        return out.name
    from converters.quantize import output_stem

    return output_stem(out)


def model_id(folder: Path) -> str:
    """How a model folder is known: owner/name for a hub snapshot or a config naming one, else its name."""
    folder = Path(folder)
    repo = folder.parent.parent.name
    if folder.parent.name == "snapshots" and repo.startswith("models--"):
        return repo.removeprefix("models--").replace("--", "/", 1)
    config = _read_json(folder / "config.json")
    name = config.get("_name_or_path")
    if isinstance(name, str) and name.count("/") == 1 and not Path(name).is_absolute() and not Path(name).exists():
        return name
    return folder.name


def merged_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "_name_or_path"}


def card_text(recipe: Recipe, name: str) -> str:
    front: dict[str, Any] = {"name": name}
    base_card = _front_matter(recipe.base / "README.md")
    for key in ("license", "license_name", "license_link", "language"):
        if key in base_card:
            front[key] = base_card[key]
    front["base_model"] = [model_id(p) for p in recipe.models()]
    front["tags"] = ["merge", "cattery"]
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "", f"# {name}", ""]
    lines.append("A merge of " + ", ".join(front["base_model"]) + ", made by `cattery merge`.")
    adapters = [p.name for p in recipe.adapters()]
    if adapters:
        lines.append("LoRA adapters merged in: " + ", ".join(adapters) + ".")
    if recipe.text is not None:
        lines += ["", "The recipe:", "", "```toml", recipe.text.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_card(folder: Path, recipe: Recipe, name: str) -> None:
    (folder / "README.md").write_text(card_text(recipe, name), encoding="utf-8")


@contextmanager
def card_folder(recipe: Recipe, name: str, config: dict[str, Any], generation_config: Path | None) -> Iterator[Path]:
    """A temporary folder named `name` holding what the converter reads of a merged folder."""
    with tempfile.TemporaryDirectory(prefix="cattery-card-") as tmp:
        folder = Path(tmp) / (name.replace("/", "-") or "merge")
        folder.mkdir()
        write_card(folder, recipe, name)
        (folder / "config.json").write_text(json.dumps(merged_config(config), indent=2) + "\n", encoding="utf-8")
        if generation_config is not None and generation_config.is_file():
            shutil.copyfile(generation_config, folder / generation_config.name)
        yield folder


def _front_matter(card: Path) -> dict[str, Any]:
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        data = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
