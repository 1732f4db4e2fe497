"""The values of a recipe (merge or build) that are more than numbers: names, paths, the [gguf] table.

A recipe may come from a stranger (a model page, a forum post): its text is read within a
bound and parsed with depth and number checks (app.untrusted.parse_toml), and every
value that becomes a file name, a path or an option is checked here, once for both
kinds of recipe:

- a name becomes a folder or a file name: no separators, no `.`/`..`, no control
  characters, at most 200 characters;
- a path is text without NUL or control characters (which Python's path functions
  turn into ValueError), within the length the system allows, `~` only for a user
  that exists;
- the [gguf] table's `outtype`, `pre_tokenizer` and `chat_format` are known values,
  refused before any work rather than after a long merge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.errors import CatteryError, InputError
from app.untrusted import parse_toml, read_text_bounded

MAX_RECIPE_BYTES = 1024 * 1024  # honest recipes are a few KB
MAX_NAME = 200
MAX_PATH = 4096
GGUF_OPTIONS = ("outtype", "pre_tokenizer", "chat_format")


def read_recipe(path: Path, error: type[CatteryError]) -> tuple[str, dict[str, Any]]:
    """(the text, the TOML table) of a recipe file; any problem is one `error` line naming the file."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise error(f"{path}: not a recipe file")
    try:
        text = read_text_bounded(path, MAX_RECIPE_BYTES, "recipe")
        return text, parse_toml(text, str(path))
    except InputError as exc:
        message = str(exc)
        if message.endswith(": no such file"):
            message = f"{path}: no such recipe file"
        raise error(message) from None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def _has_controls(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def plain_name(value: Any, where: str, error: type[CatteryError], *, slash: bool = False) -> str:
    """A name that becomes a folder or file name (with `slash`, an owner/name that does not)."""
    if not isinstance(value, str) or not value.strip():
        raise error(f"{where}: expected a name")
    name = value.strip()
    bad = ("\\",) if slash else ("/", "\\")
    if len(name) > MAX_NAME or _has_controls(name) or any(b in name for b in bad) or set(name) <= {"."}:
        raise error(
            f"{where}: {name[:40]!r} is not a plain name (at most {MAX_NAME} characters, "
            f"no {'backslash' if slash else 'slash'}, no control characters, not . or ..)"
        )
    return name


def path_value(value: Any, where: str, error: type[CatteryError], root: Path) -> Path:
    """A path as a recipe writes it, relative to `root`, with `~` expanded."""
    if not isinstance(value, str) or not value:
        raise error(f"{where}: expected the path of a folder")
    if len(value) > MAX_PATH or _has_controls(value):
        raise error(f"{where}: {value[:40]!r} is not a path (control characters, or too long)")
    try:
        return Path(root) / Path(value).expanduser()
    except RuntimeError:  # ~user for a user that does not exist
        raise error(f"{where}: {value[:40]!r}: no such user's home folder") from None


def is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def gguf_options(table: Any, where: str, error: type[CatteryError], *, more: tuple[str, ...] = ()) -> dict[str, Any]:
    """The [gguf] table: known keys only, and values the converter will take."""
    if not isinstance(table, dict):
        raise error(f"{where}: [gguf] must be a table")
    allowed = (*GGUF_OPTIONS, *more)
    unknown = sorted(k for k in table if k not in allowed)
    if unknown:
        raise error(f"{where}: [gguf] has an unknown key {unknown[0][:40]!r} (expected {', '.join(allowed)})")
    check_gguf_values(table, where, error)
    return dict(table)


def check_gguf_values(options: dict[str, Any], where: str, error: type[CatteryError]) -> None:
    """outtype, pre_tokenizer and chat_format as the converter takes them (None: not given)."""
    from converters.gguf_tensors import OUTTYPES

    outtype = options.get("outtype")
    if outtype is not None and (not isinstance(outtype, str) or outtype.lower() not in (*OUTTYPES, "auto")):
        raise error(f"{where}: outtype {_show(outtype)} is not one of {', '.join(OUTTYPES)}, auto")
    pre = options.get("pre_tokenizer")
    if pre is not None:
        from converters.gguf_tokenizer import pre_tokenizers

        names = pre_tokenizers().names
        if not isinstance(pre, str) or pre not in names:
            raise error(f"{where}: pre_tokenizer {_show(pre)} is not one llama.cpp knows")
    fmt = options.get("chat_format")
    if fmt is not None:
        if not isinstance(fmt, str):
            raise error(f"{where}: chat_format should be the name of a prompt format")
        from app.prompt.formats import get_format

        try:
            get_format(fmt)
        except CatteryError as exc:
            raise error(f"{where}: chat_format: {exc}") from None
