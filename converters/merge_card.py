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

from app.errors import CatteryError
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
    if not isinstance(name, str) or len(name) > 200 or any(ord(c) < 32 for c in name):
        return folder.name
    if name.count("/") == 1 and not Path(name).is_absolute() and not Path(name).exists():
        return name
    return folder.name


def merged_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "_name_or_path"}


def card_text(recipe: Recipe, name: str) -> str:
    front: dict[str, Any] = {"name": name}
    base_card = _front_matter(recipe.base / "README.md")
    for key in ("license", "license_name", "license_link", "language"):
        if _is_text(base_card.get(key)):  # only what the GGUF's general.* can hold: text, or a list of it
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


def _is_text(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= 1000
    return isinstance(value, list) and len(value) <= 200 and all(isinstance(v, str) and len(v) <= 200 for v in value)


def _front_matter(card: Path) -> dict[str, Any]:
    """The base model card's front matter, read as the converter reads it, without YAML aliases and
    within bounds; a card that is not one (or is hostile) gives nothing rather than stopping the merge."""
    from app.untrusted import parse_yaml
    from converters.card_check import MAX_FRONT_MATTER, front_matter
    from converters.untrusted_files import read_bytes

    try:
        text = read_bytes(card, card.parent, what="model card").decode("utf-8")
        yaml_text = front_matter(text)
        if yaml_text is None or len(yaml_text) > MAX_FRONT_MATTER:
            return {}
        data = parse_yaml(yaml_text, str(card))
    except (CatteryError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    from converters.untrusted_files import read_json

    try:
        return dict(read_json(path, path.parent))
    except CatteryError:
        return {}
