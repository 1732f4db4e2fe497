"""Parsing data from outside with bounds on depth, size and values.

Cards, lorebooks, chat files, checkpoints' JSON, recipes and settings all arrive from
strangers. Python's parsers are fine for honest input but have three weak spots this
module closes once for every door:

- depth: `json.loads` accepts ~1000 levels and leaves the recursion to whoever walks
  the result next (normalising, copying, dumping), which then dies with RecursionError;
  every structure is checked here, iteratively, against `MAX_DEPTH`;
- numbers: `NaN`, `Infinity` and `1e400` (which JSON turns into inf) are refused, so a
  card's `insertion_order` can never poison a sort later;
- YAML aliases: a few hundred bytes of nested aliases expand to gigabytes, so aliases
  are refused outright (no card format needs them).

Every failure is an `InputError` whose one line names the source.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from app.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Far below Python's recursion limit (1000), far above any honest card, chat, config
# or recipe (the deepest seen: ~8 levels in a tokenizer.json).
MAX_DEPTH = 64
# What a JSON text may cost once parsed, in `json_cost` units (~85 bytes of Python objects
# each at worst, so ~170 MB): Llama 3's tokenizer.json, the largest honest file read, costs ~1.25M.
MAX_JSON_COST = 2_000_000


def json_cost(text: str | bytes) -> int:
    """An upper bound on what a JSON text will cost once parsed, counted at C speed from its
    separators before anything is made: a value per comma or opening bracket, an object member
    (a new key and a hash-table slot) as three. `{},` is three bytes but a whole dict, so the
    size of a file alone bounds nothing. Separators inside strings only make it overestimate."""
    if isinstance(text, str):
        return text.count(",") + text.count("[") + text.count("{") + 2 * text.count(":") + 1
    return text.count(b",") + text.count(b"[") + text.count(b"{") + 2 * text.count(b":") + 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


_SURROGATE = re.compile("[\ud800-\udfff]")


def _mend(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


def check_structure(obj: Any, source: str, *, max_depth: int = MAX_DEPTH, allow_nonfinite: bool = False) -> Any:
    """Refuse structures nested deeper than `max_depth`, and NaN or infinite floats; mend text.

    Iterative, so it cannot itself overflow the stack. A lone surrogate (half an emoji,
    as JavaScript leaves when it cuts a string) becomes U+FFFD in place: refusing a whole
    chat for one broken character would be worse, and keeping it would fail later, when
    the text is encoded for the tokenizer or the database. Returns `obj` for chaining.
    """
    if isinstance(obj, str):
        return _mend(obj)
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise InputError(f"{source}: nested more than {max_depth} levels deep")
            for key in [k for k in item if isinstance(k, str) and _SURROGATE.search(k)]:
                item[_mend(key)] = item.pop(key)
            for key, value in item.items():
                if isinstance(value, str):
                    if _SURROGATE.search(value):
                        item[key] = _mend(value)
                else:
                    stack.append((value, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                raise InputError(f"{source}: nested more than {max_depth} levels deep")
            for i, value in enumerate(item):
                if isinstance(value, str):
                    if _SURROGATE.search(value):
                        item[i] = _mend(value)
                else:
                    stack.append((value, depth + 1))
        elif isinstance(item, float) and not allow_nonfinite and not math.isfinite(item):
            raise InputError(f"{source}: holds a number that is not finite ({item})")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(
    text: str | bytes,
    source: str,
    *,
    max_depth: int = MAX_DEPTH,
    allow_nonfinite: bool = False,
    max_cost: int = MAX_JSON_COST,
) -> Any:
    """`json.loads` with the cost, depth and number checks; any failure is one `InputError` line."""
    if json_cost(text) > max_cost:
        raise InputError(f"{source}: holds more than {max_cost:,} values, more than any honest file")
    try:
        obj = json.loads(text, parse_constant=None if allow_nonfinite else _refuse_constant)
    except RecursionError:
        raise InputError(f"{source}: nested more than {max_depth} levels deep") from None
    except UnicodeDecodeError:
        raise InputError(f"{source}: not UTF-8 text") from None
    except ValueError as exc:  # JSONDecodeError, too-long integers, NaN/Infinity
        raise InputError(f"{source}: not valid JSON: {_first_line(exc)}") from None
    return check_structure(obj, source, max_depth=max_depth, allow_nonfinite=allow_nonfinite)


def parse_toml(
    text: str | bytes, source: str, *, max_depth: int = MAX_DEPTH, allow_nonfinite: bool = False
) -> dict[str, Any]:
    """`tomllib.loads` with the depth check; bytes that are not UTF-8 are refused by name.

    TOML itself allows `inf` and `nan`; they are refused unless `allow_nonfinite` (settings
    let them through to their schema, so one bad number costs one key, not the file).
    A UTF-8 byte-order mark, which some editors write, is not a mistake.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    try:
        obj = tomllib.loads(text.removeprefix("\ufeff"))
    except RecursionError:
        raise InputError(f"{source}: nested more than {max_depth} levels deep") from None
    except ValueError as exc:  # TOMLDecodeError, an integer too long to convert
        raise InputError(f"{source}: not valid TOML: {_first_line(exc)}") from None
    return check_structure(obj, source, max_depth=max_depth, allow_nonfinite=allow_nonfinite)


def _no_alias_loader() -> type:
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """SafeLoader that refuses aliases: the only way a small YAML file becomes a huge object."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise InputError(f"uses a YAML alias (line {event.start_mark.line + 1}), which cards never need")
            return super().compose_node(parent, index)

    return NoAliasLoader


def parse_yaml(text: str, source: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """`yaml.safe_load` without aliases, with the depth and number checks."""
    import yaml

    try:
        obj = yaml.load(text, Loader=_no_alias_loader())
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    except RecursionError:
        raise InputError(f"{source}: nested more than {max_depth} levels deep") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not valid YAML: {_first_line(exc)}") from None
    except ValueError as exc:  # e.g. an integer too long to convert
        raise InputError(f"{source}: not valid YAML: {_first_line(exc)}") from None
    return check_structure(obj, source, max_depth=max_depth)


def read_bounded(path: Path, max_bytes: int, what: str = "file") -> bytes:
    """A whole regular file, refused before reading when it is larger than any honest one.

    Opened without blocking and checked with fstat, so a FIFO (which would wait for a
    writer forever) or a device (which may never end) is refused rather than read.
    """
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise InputError(f"{path}: a folder, not a {what}") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{path}: a folder, not a {what}")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: not a regular file (a pipe or a device), not a {what}")
        if st.st_size > max_bytes:
            raise InputError(f"{path}: {st.st_size:,} bytes, more than a {what} can be ({max_bytes:,})")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # a file that grew while it was read
        raise InputError(f"{path}: more than a {what} can be ({max_bytes:,} bytes)")
    return data


def read_text_bounded(path: Path, max_bytes: int, what: str = "file") -> str:
    data = read_bounded(path, max_bytes, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def require(value: Any, kind: type | tuple[type, ...], source: str, key: str) -> Any:
    """`value` if it is of `kind` (bool is not an int here), else one line naming the key."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise InputError(f"{source}: {key} should be {_article(names)}, not {_describe(value)}")
    return value


def _article(names: str) -> str:
    return ("an " if names[:1] in "aeiou" else "a ") + names


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"
