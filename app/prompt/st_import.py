"""Turning a SillyTavern instruct preset (JSON) into a Cattery format file.

SillyTavern describes a format as sequences (input, output, system) with suffixes,
a `wrap` flag that puts a newline after each sequence, an optional last output
sequence for the generation prompt, and `system_same_as_user` for models without a
system role. Macros and alignment messages have no meaning here and are left out.

A preset is a stranger's file: it is read within `MAX_PRESET` bytes through the bounded
JSON parser, every value used must be of its type and size, and the format's file name
is derived from its name with a length cap and never a name Windows reserves. The
format is checked before it is written, and a file that does not read back is removed,
so a bad preset cannot leave a format file that breaks every later command.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from app.errors import CatteryError

MAX_PRESET = 1024 * 1024  # bytes; SillyTavern's own presets are about 1 KiB
MAX_SEQUENCE = 64 * 1024  # characters in one sequence or suffix
MAX_SLUG = 64
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}

_STRING_KEYS = (
    "input_sequence",
    "output_sequence",
    "system_sequence",
    "input_suffix",
    "output_suffix",
    "system_suffix",
    "last_output_sequence",
    "stop_sequence",
    "system_sequence_prefix",
    "system_sequence_suffix",
)


def slug(name: str) -> str:
    out = re.sub(r"[^a-z0-9]+", "-", name.lower())[: MAX_SLUG * 2].strip("-")[:MAX_SLUG].strip("-") or "imported"
    return f"{out}-preset" if out in _RESERVED else out


def convert_st_instruct(data: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    """(format name, the TOML table of the format) for a SillyTavern instruct preset."""
    if not isinstance(data, dict) or "input_sequence" not in data or "output_sequence" not in data:
        raise CatteryError(f"{source}: not a SillyTavern instruct preset (no input_sequence/output_sequence)")
    for key in _STRING_KEYS:
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise CatteryError(f"{source}: {key} must be a string")
        if isinstance(data.get(key), str) and len(data[key]) > MAX_SEQUENCE:
            raise CatteryError(f"{source}: {key} is {len(data[key]):,} characters long (at most {MAX_SEQUENCE:,})")
    if data.get("name") is not None and not isinstance(data["name"], str):
        raise CatteryError(f"{source}: name must be a string")
    if data.get("names_behavior") is not None and not isinstance(data["names_behavior"], str):
        raise CatteryError(f"{source}: names_behavior must be a string")
    nl = "\n" if data.get("wrap") else ""

    def seq(key: str) -> str:
        value = data.get(key) or ""
        return value + nl if value else ""

    # The pinned block is SillyTavern's story string: wrapped by the system sequence
    # prefix/suffix where a preset has them (Metharme), else by the system sequence,
    # else (no system role) by the user's.
    if data.get("system_sequence_prefix") or data.get("system_sequence_suffix"):
        system_prefix = data.get("system_sequence_prefix") or ""
        system_suffix = data.get("system_sequence_suffix") or ""
    elif data.get("system_sequence"):
        system_prefix, system_suffix = seq("system_sequence"), data.get("system_suffix") or ""
    elif data.get("system_same_as_user"):
        system_prefix, system_suffix = seq("input_sequence"), data.get("input_suffix") or ""
    else:
        system_prefix, system_suffix = "", data.get("system_suffix") or ""
    stops = [s for s in [data.get("stop_sequence") or "", (data.get("input_sequence") or "").strip()] if s]
    out: dict[str, Any] = {
        "description": f"imported from SillyTavern's {data.get('name') or Path(source).stem!s} instruct preset",
        "bos": "model",
        "system_prefix": system_prefix,
        "system_suffix": system_suffix,
        "user_prefix": seq("input_sequence"),
        "user_suffix": data.get("input_suffix") or "",
        "assistant_prefix": seq("output_sequence"),
        "assistant_suffix": data.get("output_suffix") or "",
        "stop": list(dict.fromkeys(stops)),
        "names": data.get("names_behavior") in ("always", "force") or bool(data.get("names")),
    }
    if data.get("last_output_sequence"):
        out["generation_prefix"] = seq("last_output_sequence")
    return slug(str(data.get("name") or Path(source).stem)), out


def import_st_preset(path: Path, folder: Path, name: str | None = None) -> Path:
    from app.atomic import write_text_checked
    from app.prompt.formats import available_formats, load_format_file
    from app.untrusted import parse_json, parse_toml, read_bounded

    data = parse_json(read_bounded(path, MAX_PRESET, "SillyTavern preset"), str(path))
    default_name, table = convert_st_instruct(data, str(path))
    chosen = slug(name) if name else default_name
    if not name and chosen in available_formats():
        chosen += "-st"  # never replace a format by accident; --name does it on purpose
    target = folder / f"{chosen}.toml"
    import tomli_w

    text = tomli_w.dumps(table)
    parse_toml(text, str(path))  # what is written must read back
    write_text_checked(target, text, load_format_file)
    return target
