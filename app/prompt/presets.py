"""System-prompt presets as data: one TOML file per preset in `assets/presets/`, and the user's own
in the config dir's `presets/` (where `cattery presets import` writes SillyTavern's).

A preset is the text a chat's system prompt starts from (what `{{original}}` stands for in a card's
own system prompt), with optional post-history instructions, a line saying what it is for and
where its words came from. The name is the file's name: a name from outside (the settings, a chat,
the command line) is only ever looked up among the files found, never turned into a path.

The user's folder holds strangers' files (imports, copies from forums): each is read within
`MAX_PRESET_BYTES`, every key checked for its type and size, and a broken one is skipped with a
one-line problem naming the file, so one bad file never stops a chat that does not use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.errors import CatteryError

MAX_PRESET_BYTES = 1 << 20  # SillyTavern's presets are a few hundred bytes; a megabyte is not one
MAX_TEXT = 256 * 1024  # characters in a preset's text or post-history instructions
MAX_LINE = 1024  # characters in its description or source
MAX_PRESETS = 2000  # files read from one folder: a listing stays fast whatever is dropped there

_KEYS = {"text": MAX_TEXT, "post_history": MAX_TEXT, "description": MAX_LINE, "source": MAX_LINE}


@dataclass(frozen=True)
class SystemPreset:
    name: str
    text: str
    description: str = ""
    post_history: str = ""
    source: str = ""  # where the words came from: a model card's address, the file it was imported from
    path: Path | None = field(default=None, compare=False)
    bundled: bool = field(default=False, compare=False)


def preset_dir() -> Path:
    from app.assets import asset_path

    return asset_path("presets")


def user_preset_dirs() -> list[Path]:
    from app.paths import get_paths

    return [get_paths().config_dir / "presets"]


def load_preset_file(path: Path, *, bundled: bool = False) -> SystemPreset:
    """A preset from its TOML file; anything wrong is one line naming the file."""
    from app.untrusted import parse_toml, read_bounded

    data = parse_toml(read_bounded(path, MAX_PRESET_BYTES, "system-prompt preset"), str(path))
    unknown = set(data) - set(_KEYS)
    if unknown:
        raise CatteryError(f"{path}: unknown keys {', '.join(sorted(unknown))} (a preset has {', '.join(_KEYS)})")
    if "text" not in data:
        raise CatteryError(f"{path}: no text (the system prompt itself)")
    for key, limit in _KEYS.items():
        value = data.get(key, "")
        if not isinstance(value, str):
            raise CatteryError(f"{path}: {key} must be a string")
        if "\x00" in value:
            raise CatteryError(f"{path}: {key} holds a NUL character")
        if len(value) > limit:
            raise CatteryError(f"{path}: {key} is {len(value):,} characters long (at most {limit:,})")
    return SystemPreset(
        name=path.stem,
        text=data["text"],
        description=" ".join(data.get("description", "").split()),
        post_history=data.get("post_history", ""),
        source=" ".join(data.get("source", "").split()),
        path=path,
        bundled=bundled,
    )


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    try:
        found = sorted(p for p in folder.glob("*.toml") if not p.name.startswith("."))
    except OSError as exc:
        raise CatteryError(f"{folder}: cannot list the presets: {exc.strerror or type(exc).__name__}") from None
    return found[:MAX_PRESETS]


def load_presets() -> tuple[dict[str, SystemPreset], list[str]]:
    """(every preset by name, a line for each file that could not be read). Shipped presets first,
    then the user's, which win on a name clash: a user edits a bundled one by copying it."""
    found: dict[str, SystemPreset] = {}
    problems: list[str] = []
    folders = [(preset_dir(), True)] + [(d, False) for d in user_preset_dirs()]
    for folder, bundled in folders:
        for path in _files(folder):
            try:
                found[path.stem] = load_preset_file(path, bundled=bundled)
            except CatteryError as exc:
                problems.append(str(exc))
    return found, problems


def available_presets() -> dict[str, SystemPreset]:
    return load_presets()[0]


def preset_names() -> list[str]:
    """The names there are, from the file names alone (nothing is parsed): cheap enough for the
    settings check, which only needs to know that a name is one."""
    names: set[str] = set()
    for folder in [preset_dir(), *user_preset_dirs()]:
        try:
            names.update(p.stem for p in _files(folder))
        except CatteryError:
            continue
    return sorted(names)


def get_preset(name: str) -> SystemPreset:
    """The preset of this name; an unknown name (with the closest known ones) or a broken file is one line."""
    presets, problems = load_presets()
    if name in presets:
        return presets[name]
    for problem in problems:  # the file is there but broken: say what is wrong with it
        for folder in [preset_dir(), *user_preset_dirs()]:
            if problem.startswith(f"{folder / name}.toml:"):
                raise CatteryError(problem)
    from app.near_names import unknown

    raise CatteryError(unknown("system-prompt preset", name, sorted(presets)))
