"""Prompt formats as data: one TOML file per format in `assets/formats/`.

A format says how each kind of message is wrapped. Every message renders the same
wherever it sits in the conversation (openers that a format puts at the start of a
turn belong to the end of the previous message, as in `llama2`), so a message's
tokens never change when the window slides: that is what lets the engine shift
whole messages in the KV cache.

Placeholders `{user}` and `{char}` in any prefix, suffix or stop string are the
speakers' names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from app.errors import CatteryError

if TYPE_CHECKING:
    from app.prompt.reasoning import ReasoningMarkers

GGUF = "gguf"  # the model's own chat template: not a file, rendered by Jinja
FALLBACK = "chatml"


@dataclass(frozen=True)
class PromptFormat:
    name: str
    description: str = ""
    match: tuple[str, ...] = ()  # substrings of a model's name that suggest this format
    bos: str = "model"  # "model": the model's BOS when its tokenizer adds one; "never"
    system_prefix: str = ""
    system_suffix: str = ""
    system_default: str = ""  # used when no system prompt is given
    system_empty: str = ""  # what the pinned block is when there is no system text at all
    user_prefix: str = ""
    user_suffix: str = ""
    assistant_prefix: str = ""
    assistant_suffix: str = ""
    generation_prefix: str | None = None  # what the prompt ends with; default: assistant_prefix
    stop: tuple[str, ...] = ()
    names: bool = False  # write "Name: " before each message's text
    # A thinking model's reasoning block (app/prompt/reasoning.py): its markers; `reasoning_opened`
    # when the generation prefix opens the block itself; `no_reasoning`: what is written after the
    # generation prefix to skip thinking ("" when the model has no such switch).
    reasoning_start: str = ""
    reasoning_end: str = ""
    reasoning_opened: bool = False
    no_reasoning: str = ""
    source: Path | None = field(default=None, compare=False)

    @property
    def reasoning(self) -> ReasoningMarkers | None:
        if not (self.reasoning_start and self.reasoning_end):
            return None
        from app.prompt.reasoning import ReasoningMarkers

        return ReasoningMarkers(self.reasoning_start, self.reasoning_end, self.reasoning_opened, self.no_reasoning)

    @property
    def generation(self) -> str:
        return self.assistant_prefix if self.generation_prefix is None else self.generation_prefix

    def fill(self, text: str, user: str, char: str) -> str:
        return text.replace("{user}", user).replace("{char}", char)

    def stop_strings(self, user: str, char: str) -> list[str]:
        return [self.fill(s, user, char) for s in self.stop]


_FIELDS = {f.name for f in fields(PromptFormat)} - {"name", "source"}
_FIELD_TYPES = {f.name: str(f.type) for f in fields(PromptFormat)}


def format_dir() -> Path:
    from app.assets import asset_path

    return asset_path("formats")


MAX_FORMAT_BYTES = 1 << 20  # a format is a few hundred bytes of prefixes; a megabyte is not one


def load_format_file(path: Path) -> PromptFormat:
    """A format from its TOML file, each key checked against its type (the user's own folder
    holds imported presets and hand edits: a number where text goes is one line, not a crash later)."""
    from app.untrusted import parse_toml, read_bounded

    try:
        data = parse_toml(read_bounded(path, MAX_FORMAT_BYTES, "prompt format"), str(path))
    except CatteryError as exc:
        raise CatteryError(f"cannot read the format: {exc}") from None
    unknown = set(data) - _FIELDS
    if unknown:
        raise CatteryError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    for key, value in data.items():
        kind = _FIELD_TYPES[key]
        if kind == "tuple[str, ...]":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise CatteryError(f"{path}: {key} must be a list of strings")
            data[key] = tuple(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise CatteryError(f"{path}: {key} must be true or false")
        elif not isinstance(value, str):
            raise CatteryError(f"{path}: {key} must be a string")
    if data.get("bos", "model") not in ("model", "never"):
        raise CatteryError(f'{path}: bos must be "model" or "never"')
    if bool(data.get("reasoning_start")) != bool(data.get("reasoning_end")):
        raise CatteryError(f"{path}: reasoning_start and reasoning_end go together")
    return PromptFormat(name=path.stem, source=path, **data)


def user_format_dirs() -> list[Path]:
    from app.paths import get_paths

    return [get_paths().config_dir / "formats"]


def available_formats() -> dict[str, PromptFormat]:
    """Shipped formats, then the user's own (`formats/` in the config dir), which win on a name clash."""
    found: dict[str, PromptFormat] = {}
    for folder in [format_dir(), *user_format_dirs()]:
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found[path.stem] = load_format_file(path)
    return found


def format_names() -> list[str]:
    return [*sorted(available_formats()), GGUF]


def get_format(name: str) -> PromptFormat:
    formats = available_formats()
    if name not in formats:
        from app.near_names import unknown

        raise CatteryError(unknown("prompt format", name, format_names()))
    return formats[name]


def guess_format(names: list[str]) -> str | None:
    """The format whose longest `match` pattern occurs in the model's names, if any."""
    haystack = " ".join(n.lower() for n in names if n)
    best: tuple[int, str] | None = None
    for fmt in available_formats().values():
        for pattern in fmt.match:
            if pattern.lower() in haystack and (best is None or len(pattern) > best[0]):
                best = (len(pattern), fmt.name)
    return best[1] if best else None
