"""Files, JSON and YAML from a card, a lorebook or a library copy, bounded, as one `CardError` line.

The bounds are app.untrusted's (depth, NaN and infinity, lone surrogates mended, YAML
aliases refused), so a structure that passes here can be copied, sorted, dumped and
walked recursively anywhere later. The messages keep the card readers' own wording
("the 'chara' chunk is not valid JSON (… at line 3)"), which names the part of the
file at fault.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from app.cards.errors import MAX_JSON_TEXT, MAX_JSON_VALUES, MAX_YAML_TEXT, CardError
from app.errors import InputError
from app.untrusted import MAX_DEPTH, check_structure, json_cost, parse_yaml


def read_file(path: Path, source: str, limit: int, what: str) -> bytes:
    """The file's bytes, refused before reading when it is not a regular file or too large.

    Opened without blocking (a named pipe would wait for a writer forever), then measured
    through the open descriptor, so what is measured is what is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise CardError(source, f"is a folder, not {what}")
            if not stat.S_ISREG(info.st_mode):
                raise CardError(source, "not a regular file (a device, a pipe or a socket)")
            if info.st_size > limit:
                raise CardError(source, f"larger than the {limit // 2**20} MiB {what} may be")
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise CardError(source, "file not found") from None
    except IsADirectoryError:
        raise CardError(source, f"is a folder, not {what}") from None
    except OSError as exc:
        raise CardError(source, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    if len(data) > limit:  # it grew while read
        raise CardError(source, f"larger than the {limit // 2**20} MiB {what} may be")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"it holds {name}, which is not a number")


def _problem(exc: InputError, source: str) -> str:
    text = str(exc)
    return text[len(source) + 2 :] if text.startswith(f"{source}: ") else text


def load_json(text: bytes | str, source: str, what: str = "the file", *, limit: int = MAX_JSON_TEXT) -> Any:
    import json

    if len(text) > limit:
        raise CardError(source, f"{what} is larger than {limit // 2**20} MiB")
    # json_cost counts an object member as three: twice the values' bound is the same limit on lists.
    if json_cost(text) > 2 * MAX_JSON_VALUES * max(1, limit // MAX_JSON_TEXT):
        raise CardError(source, f"{what} holds more than {MAX_JSON_VALUES:,} values (numbers, texts, lists)")
    try:
        if isinstance(text, bytes):  # JSON is UTF-8 (RFC 8259); json.loads would also guess UTF-16 and -32
            text = text.decode("utf-8-sig")
        obj = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise CardError(source, f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise CardError(source, f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise CardError(source, f"{what} is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # NaN or Infinity, an integer of thousands of digits
        raise CardError(source, f"{what} is not valid JSON ({str(exc).splitlines()[0]})") from None
    try:
        return check_structure(obj, source)
    except InputError as exc:
        raise CardError(source, f"{what} {_problem(exc, source)}") from None


def load_yaml(data: bytes, source: str) -> Any:
    if len(data) > MAX_YAML_TEXT:
        raise CardError(source, f"a YAML character larger than {MAX_YAML_TEXT // 1024} KiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CardError(source, f"not UTF-8 text (byte {exc.start})") from None
    try:
        return parse_yaml(text, source)
    except InputError as exc:
        raise CardError(source, _problem(exc, source)) from None


def jsonable(obj: Any) -> Any:
    """YAML's values as JSON can hold them: keys become text, dates, sets and bytes become text.

    Recursion is safe: the structure was depth-checked when it was parsed.
    """
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else _scalar_text(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, str | bool | int | float):
        return obj
    return _scalar_text(obj)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset):
        return ", ".join(sorted(str(v) for v in value))
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
