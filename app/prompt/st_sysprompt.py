"""Turning a SillyTavern system-prompt preset (JSON) into a Cattery preset file.

SillyTavern keeps them in `presets/sysprompt/`: `{"name": …, "content": …}`, and since late 2024
an optional `post_history` (post-history instructions). Macros (`{{char}}`, `{{user}}`) mean the
same here and are kept as written. Other keys are SillyTavern's own and are left out.

A preset is a stranger's file: it is read within `MAX_SOURCE` bytes through the bounded JSON
parser, each value used must be a string of a sane length, and the file written is named after
`slug(name)` (letters, digits and dashes, capped), so no name can point outside the presets
folder. What is written is read back before the import counts: a preset that would not load is
removed again, never left to break the listing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.errors import CatteryError

MAX_SOURCE = 1 << 20  # bytes; SillyTavern's own are well under 1 KiB


def convert_st_sysprompt(data: Any, source: str) -> tuple[str, dict[str, str]]:
    """(the preset's name as SillyTavern gives it, the TOML table of the Cattery preset)."""
    from app.prompt.presets import MAX_LINE, MAX_TEXT

    if not isinstance(data, dict):
        raise CatteryError(f"{source}: not a SillyTavern system-prompt preset (a JSON object with content)")
    if "content" not in data:
        if "input_sequence" in data or "output_sequence" in data:
            raise CatteryError(
                f"{source}: a SillyTavern instruct preset, not a system prompt: `cattery formats import` it"
            )
        raise CatteryError(f"{source}: not a SillyTavern system-prompt preset (no content)")
    for key in ("content", "name", "post_history"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise CatteryError(f"{source}: {key} must be a string")
    content, post = data["content"] or "", data.get("post_history") or ""
    name = (data.get("name") or "").strip() or Path(source).stem
    if len(name) > MAX_LINE:
        raise CatteryError(f"{source}: name is {len(name):,} characters long (at most {MAX_LINE:,})")
    for key, value in (("content", content), ("post_history", post)):
        if len(value) > MAX_TEXT:
            raise CatteryError(f"{source}: {key} is {len(value):,} characters long (at most {MAX_TEXT:,})")
        if "\x00" in value:
            raise CatteryError(f"{source}: {key} holds a NUL character")
    table = {
        "description": " ".join(f"imported from SillyTavern's {name!r} system prompt".split())[:MAX_LINE],
        "source": Path(source).name[:MAX_LINE],
        "text": content,
    }
    if post:
        table["post_history"] = post
    return name, table


def import_st_sysprompt(path: Path, folder: Path, name: str | None = None) -> Path:
    """Write the preset into `folder`; its path. Without `name`, a clash with an existing preset gets
    `-st` added (nothing is replaced by accident); `--name` replaces on purpose."""
    import tomli_w

    from app.atomic import write_text_checked
    from app.prompt.presets import available_presets, load_preset_file
    from app.prompt.st_import import slug
    from app.untrusted import parse_json, parse_toml, read_bounded

    data = parse_json(read_bounded(path, MAX_SOURCE, "SillyTavern system-prompt preset"), str(path))
    st_name, table = convert_st_sysprompt(data, str(path))
    chosen = slug(name) if name else slug(st_name)
    if not name and chosen in available_presets():
        chosen += "-st"
    target = folder / f"{chosen}.toml"
    # Multi-line strings keep the file readable for hand edits; where one would not read back as
    # it was meant (a carriage return), the escaped form is written instead.
    for multiline in (True, False):
        text = tomli_w.dumps(table, multiline_strings=multiline)
        if parse_toml(text, str(path)) == table:
            break
    else:
        raise CatteryError(f"{path}: the preset does not survive being written as TOML")
    write_text_checked(target, text, load_preset_file)
    return target
