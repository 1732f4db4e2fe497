"""A checkpoint's model card (README.md front matter) and generation_config.json, checked before gguf-py reads them.

llama.cpp's converter takes general.* and the default sampling settings from these
through gguf-py's `Metadata`, which reads them itself: the front matter with
`yaml.safe_load` (where a few hundred bytes of nested aliases expand to gigabytes),
the JSON with plain `json.load`, and every value goes into a typed GGUF field. So the
front matter is parsed here first without aliases and within bounds, and the sampling
settings are typed; what gguf-py still cannot take is caught where it is called.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from app.errors import InputError
from app.untrusted import parse_yaml
from converters.errors import CheckpointError
from converters.untrusted_files import own_file, read_bytes, read_json_if_present

MAX_FRONT_MATTER = 128 * 1024  # honest front matter is a few KB; pure-Python YAML reads ~300 KB/s
INT_SETTINGS = ("top_k", "penalty_last_n", "mirostat")
FLOAT_SETTINGS = (
    "top_p",
    "min_p",
    "xtc_probability",
    "xtc_threshold",
    "temperature",
    "penalty_repeat",
    "mirostat_tau",
    "mirostat_eta",
)


def front_matter(text: str) -> str | None:
    """The YAML between the first two `---` lines, exactly as gguf-py's `Metadata.load_model_card` cuts it."""
    lines = text.splitlines()
    if not lines or lines[0] != "---":
        return None
    body = []
    for line in lines[1:]:
        if line == "---":
            break
        body.append(line)
    return ("\n".join(body) + "\n").replace("- no\n", '- "no"\n').replace("\t", "  ")


def _check_card(folder: Path) -> None:
    readme = folder / "README.md"
    if own_file(readme, folder, required=False) is None:
        return
    try:
        text = read_bytes(readme, folder, what="model card").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{readme}: not UTF-8 text (byte {exc.start})") from None
    yaml_text = front_matter(text)
    if yaml_text is None:
        return
    if len(yaml_text) > MAX_FRONT_MATTER:
        raise CheckpointError(f"{readme}: its front matter is longer than {MAX_FRONT_MATTER:,} characters")
    try:
        parse_yaml(yaml_text, f"{readme}: front matter")
    except InputError as exc:
        raise CheckpointError(str(exc)) from None


def _check_generation(folder: Path) -> None:
    path = folder / "generation_config.json"
    gen = read_json_if_present(path, folder)
    if gen is None:
        return
    for key in INT_SETTINGS:
        v = gen.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not -(2**31) <= v < 2**31):
            raise CheckpointError(f"{path}: {key} should be a whole number, not {str(v)[:40]}")
    for key in FLOAT_SETTINGS:
        v = gen.get(key)
        ok = v is None or (
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 3e38
        )
        if not ok:
            raise CheckpointError(f"{path}: {key} should be a number, not {str(v)[:40]}")
    if gen.get("sequence") is not None and not isinstance(gen["sequence"], str):
        raise CheckpointError(f"{path}: sequence should be text")


def check_card_folder(folder: Path) -> None:
    """README.md, generation_config.json and config.json of `folder` as gguf-py's `Metadata` will read them."""
    folder = Path(folder)
    _check_card(folder)
    _check_generation(folder)
    config: Any = read_json_if_present(folder / "config.json", folder)
    if config is not None and config.get("_name_or_path") is not None and not isinstance(config["_name_or_path"], str):
        raise CheckpointError(f"{folder / 'config.json'}: _name_or_path should be a string")


def _kind_ok(name: str, value: Any) -> bool:
    if value is None:
        return True
    if name in ("sampling_top_k", "sampling_penalty_last_n", "sampling_mirostat"):
        return isinstance(value, int) and not isinstance(value, bool)
    if name.startswith("sampling_") and name != "sampling_sequence":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if name in ("tags", "languages"):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if name in ("base_models", "datasets"):
        return isinstance(value, list) and all(
            isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values()) for entry in value
        )
    if name == "license":
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    return isinstance(value, str)


def check_metadata(meta: Any, folder: Path | None) -> None:
    """Every field gguf-py's `Metadata` gathered has the type its GGUF key stores (a card's `version: 1.5` is
    a YAML number, which gguf-py would fail on only when the file is written)."""
    import dataclasses

    for f in dataclasses.fields(meta):
        value = getattr(meta, f.name)
        if not _kind_ok(f.name, value):
            raise CheckpointError(
                f"{folder}: the model card (README.md) gives {f.name} as {type(value).__name__} "
                f"{str(value)[:40]!r}, not the text llama.cpp's metadata stores"
            )
