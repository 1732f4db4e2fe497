"""What each settings key may hold, and the check that makes a user's file safe to use.

The schema is the defaults file: every key there has a type, and a user's value of
another type is refused. Rules below narrow what a type alone cannot say (an enum, a
range, a name that must stay one line). A refused value is not fatal: the key falls
back to its built-in default and the check says so in one warning line naming the
file, the key and what was expected. That way every consumer of `Settings.get` gets
the type the defaults promise, and a typo costs a warning, not the app.

Keys the schema does not know are kept (a newer Cattery may know them) but warned about.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.engine.options import (  # the engine's own bounds: a value passed here is one it takes
    KV_CACHE_TYPES,
    MAX_BATCH,
    MAX_CTX,
    MAX_THREADS,
    preset_names,
)
from app.engine.options import MAX_REPLY_TOKENS as MAX_TOKENS
from app.terminal import visible

# Generous beyond any honest value, small enough that no consumer (a ctypes int, a
# buffer sized from it) can be pushed out of range.
MAX_LAYERS = 10**6  # "every layer" in parse_gpu_layers
MAX_SHOWN = 100_000
MAX_NAME = 256  # a persona or character name: one line
MAX_LIST = 256  # folders or lorebooks in one list
MAX_PATH = 4096  # PATH_MAX on Linux
MAX_SNAPSHOT_MB = 1 << 24  # 16 TiB of KV snapshots: a limit, not a disk anyone has
C_INT = 2**31 - 1
MAX_WARNINGS = 20  # lines about one file: enough to fix it, never a screenful of noise

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class Refused(ValueError):
    """A value outside its rule; the message says what was expected."""


@dataclass(frozen=True)
class Rule:
    # What the warning says was expected ("a whole number from 1 to 65536"); a callable
    # where making the text costs something (listing the presets reads a folder).
    expected: str | Callable[[], str]
    check: Callable[[Any], Any]  # the value to use, or raises Refused

    def describe(self) -> str:
        return self.expected if isinstance(self.expected, str) else self.expected()


# -- the building blocks of rules --------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(low: int, high: int) -> Rule:
    def check(value: Any) -> int:
        if not _is_int(value) or not low <= value <= high:
            raise Refused
        return int(value)

    return Rule(f"a whole number from {low} to {high}", check)


def number(low: float | None = None, high: float | None = None, *, above: bool = False) -> Rule:
    """A finite float (an int is taken as one); `above`: `low` itself is excluded."""

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Refused
        try:
            value = float(value)
        except OverflowError:  # an int too big for a float
            raise Refused from None
        if not math.isfinite(value):
            raise Refused
        if low is not None and (value <= low if above else value < low):
            raise Refused
        if high is not None and value > high:
            raise Refused
        return value

    if low is None:
        what = "a number"
    elif above:
        what = f"a number above {_num(low)}" + (f" and at most {_num(high)}" if high is not None else "")
    else:
        what = f"a number from {_num(low)}" + (f" to {_num(high)}" if high is not None else " up")
    return Rule(what, check)


def _num(x: float) -> str:
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def boolean() -> Rule:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise Refused
        return value

    return Rule("true or false", check)


def text(*, max_len: int | None = None, one_line: bool = False) -> Rule:
    """A string; never a NUL (it cuts paths and C strings short); `one_line`: no control characters."""

    def check(value: Any) -> str:
        if not isinstance(value, str) or "\x00" in value:
            raise Refused
        if max_len is not None and len(value) > max_len:
            raise Refused
        if one_line and _CONTROL.search(value):
            raise Refused
        return value

    what = "one line of text" if one_line else "text"
    return Rule(f"{what} of at most {max_len} characters" if max_len else what, check)


def choice(*options: str, aliases: dict[Any, str] | None = None) -> Rule:
    """One of `options` (any case); `aliases` maps other honest spellings (`true`) to one."""

    def check(value: Any) -> str:
        for alias, meant in (aliases or {}).items():
            if value is alias or (type(value) is type(alias) and value == alias):
                return meant
        if isinstance(value, str) and value.strip().lower() in options:
            return value.strip().lower()
        raise Refused

    return Rule(" or ".join(f'"{o}"' for o in options), check)


def path_list() -> Rule:
    """A list of folder or file paths: a string here would be walked letter by letter."""

    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise Refused
        for item in value:
            if not isinstance(item, str) or not item.strip() or "\x00" in item or len(item) > MAX_PATH:
                raise Refused
        return list(value)

    return Rule(f'a list of paths, like ["~/models"] (at most {MAX_LIST})', check)


def gpu_layers() -> Rule:
    def check(value: Any) -> int | str:
        if _is_int(value) and -1 <= value <= MAX_LAYERS:
            return int(value)
        if isinstance(value, str):
            word = value.strip().lower()
            if word in ("auto", "all", "max", "-1"):
                return word
            if word.isdigit() and int(word) <= MAX_LAYERS:
                return int(word)
        raise Refused

    return Rule(f'"auto", "all" or a number of layers from 0 to {MAX_LAYERS}', check)


def preset_name() -> Rule:
    def check(value: Any) -> str:
        # Only names of the preset files that exist: never a path, so never a file elsewhere.
        if isinstance(value, str) and value in preset_names():
            return value
        raise Refused

    return Rule(lambda: "one of " + ", ".join(f'"{n}"' for n in preset_names()), check)


def system_preset_name() -> Rule:
    def check(value: Any) -> str:
        # "" or the name of a preset file that exists: never a path, so never a file elsewhere.
        from app.prompt.presets import preset_names as system_presets

        if isinstance(value, str) and (value == "" or value in system_presets()):
            return value
        raise Refused

    def expected() -> str:
        from app.prompt.presets import preset_names as system_presets

        return '"" or one of ' + ", ".join(f'"{n}"' for n in system_presets())

    return Rule(expected, check)


def key_binding() -> Rule:
    """What app/tui/keys.py takes: a non-empty key name (or several), nothing it would refuse at start."""

    def one(value: Any, limit: int) -> bool:
        return isinstance(value, str) and bool(value.strip()) and len(value) <= limit and not _CONTROL.search(value)

    def check(value: Any) -> str | list[str]:
        if one(value, 1000):
            return str(value)
        if isinstance(value, list) and 0 < len(value) <= 32 and all(one(v, 100) for v in value):
            return list(value)
        raise Refused

    return Rule('a key name, like "ctrl+r,f9", or a list of them', check)


# -- the rules ---------------------------------------------------------------------------

# Keys whose rule is more than the type of their default.
EXPLICIT: dict[tuple[str, str], Rule] = {
    ("model", "default"): text(max_len=MAX_PATH),
    ("model", "last_used"): text(max_len=MAX_PATH),
    ("model", "ctx"): integer(1, MAX_CTX),
    ("model", "gpu_layers"): gpu_layers(),
    ("model", "threads"): integer(0, MAX_THREADS),
    ("model", "threads_batch"): integer(0, MAX_THREADS),
    ("model", "batch"): integer(1, MAX_BATCH),
    ("model", "flash_attn"): choice("auto", "on", "off", aliases={True: "on", False: "off"}),
    ("model", "cache_type_k"): choice(*KV_CACHE_TYPES),
    ("model", "cache_type_v"): choice(*KV_CACHE_TYPES),
    ("model", "dirs"): path_list(),
    ("chat", "char_name"): text(max_len=MAX_NAME, one_line=True),
    ("chat", "card"): text(max_len=MAX_PATH),
    ("chat", "lorebooks"): path_list(),
    ("chat", "preset"): preset_name(),
    ("chat", "system_preset"): system_preset_name(),
    ("chat", "max_tokens"): integer(1, MAX_TOKENS),
    ("chat", "thinking_budget"): integer(0, MAX_TOKENS),
    ("lore", "placement"): choice("card", "end"),
    ("chats", "busy_timeout"): number(0.0, 600.0),
    ("snapshots", "enabled"): boolean(),
    ("snapshots", "disk_limit_mb"): integer(0, MAX_SNAPSHOT_MB),
    ("snapshots", "memory_limit_mb"): integer(0, MAX_SNAPSHOT_MB),
    ("snapshots", "keep"): choice("window", "all"),
    ("persona", "name"): text(max_len=MAX_NAME, one_line=True),
    ("ui", "images"): choice("auto", "on", "off"),
    ("ui", "shown_messages"): integer(1, MAX_SHOWN),
    ("ui", "theme"): text(max_len=MAX_NAME, one_line=True),
}

# [sampler] is empty in the defaults (the preset gives the values); these are its keys,
# with the ranges SamplerSettings.validate enforces, so a bad one is dropped here with a
# warning rather than stopping every chat.
SAMPLER: dict[str, Rule] = {
    "temperature": number(-1e6, 1e6),
    "top_k": integer(0, C_INT),
    "top_p": number(0.0, 1.0, above=True),
    "min_p": number(0.0, 1.0),
    "typical_p": number(0.0, 1.0, above=True),
    "repeat_penalty": number(0.0, 1e6, above=True),
    "repeat_last_n": integer(-1, C_INT),
    "presence_penalty": number(-1e6, 1e6),
    "frequency_penalty": number(-1e6, 1e6),
    "mirostat": integer(0, 2),
    "mirostat_tau": number(0.0, 1e6),
    "mirostat_eta": number(0.0, 1e6),
    "seed": integer(0, 0xFFFFFFFE),
    "max_tokens": integer(1, MAX_TOKENS),
    "ban_eos": boolean(),
    "grammar": text(max_len=1 << 20),
}

# [model_settings."file.gguf"]: what the Models screen chose for one file.
MODEL_FILE: dict[str, Rule] = {
    "ctx": integer(1, MAX_CTX),
    "gpu_layers": gpu_layers(),
    "threads": integer(1, MAX_THREADS),
    "threads_batch": integer(1, MAX_THREADS),
    "batch": integer(1, MAX_BATCH),
    "flash_attn": EXPLICIT[("model", "flash_attn")],
    "cache_type_k": choice(*KV_CACHE_TYPES),
    "cache_type_v": choice(*KV_CACHE_TYPES),
    "rope_freq_base": number(0.0, 1e12, above=True),
    "rope_scale": number(0.0, 1e6, above=True),
    "format": text(max_len=MAX_NAME, one_line=True),
    "mmap": boolean(),
    "mlock": boolean(),
}


def engine_url() -> Rule:
    def check(value: Any) -> str:
        from app.engine.remote_http import check_url

        if not isinstance(value, str) or len(value) > MAX_PATH:
            raise Refused("")
        try:
            return check_url(value)
        except ValueError:
            raise Refused("") from None
        except Exception:  # CatteryError: a URL that is not http(s) or carries a password
            raise Refused("") from None

    return Rule("an http:// or https:// URL with a host and no password in it", check)


def env_name() -> Rule:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", value):
            raise Refused("")
        return value

    return Rule("an environment variable's name (letters, digits, _)", check)


# [engines.NAME]: a remote inference server the chat can run on (`cattery chat --engine NAME`).
ENGINE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a TOML bare key, so the settings file stays plain
ENGINE: dict[str, Rule] = {
    "url": engine_url(),
    "model": text(max_len=MAX_PATH, one_line=True),
    "api_key_env": env_name(),
    "ctx": integer(1, MAX_CTX),
    "tokenizer": text(max_len=MAX_PATH, one_line=True),  # a GGUF, a tokenizer.json or a hub repo: the vocabulary
}

# Tables whose keys are the user's own names, each checked by one rule.
FREE_TABLES: dict[str, Rule] = {"keys": key_binding()}


def rule_from_default(section: str, key: str, default: Any) -> Rule:
    """The rule of a key: an explicit one, else the type of its default."""
    explicit = EXPLICIT.get((section, key))
    if explicit is not None:
        return explicit
    if isinstance(default, bool):
        return boolean()
    if isinstance(default, int):
        return integer(0, C_INT)
    if isinstance(default, float):
        return number()
    if isinstance(default, list):
        return path_list()
    return text()


# -- checking a user's file ----------------------------------------------------------------


def _show(value: Any) -> str:
    """A value as the warning shows it: short, one line, controls visible."""
    if isinstance(value, dict):
        return "a table"
    shown = repr(value) if not isinstance(value, bool) else str(value).lower()
    if len(shown) > 40:
        shown = shown[:40] + "…"
    return visible(shown)


def _key(name: str) -> str:
    """A key or section name as the warning shows it (a hostile file may make one huge)."""
    return visible(name if len(name) <= 60 else name[:60] + "…")


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[str] = []
        self.unsaid = 0

    def warn(self, where: str, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(f"{self.source}: {where}: {message}")
        else:
            self.unsaid += 1

    def finish(self) -> list[str]:
        if self.unsaid:
            self.warnings.append(f"{self.source}: and {self.unsaid:,} more problems like these")
        return self.warnings

    def value(self, where: str, rule: Rule, value: Any, fallback: str) -> tuple[bool, Any]:
        try:
            return True, rule.check(value)
        except Refused:
            self.warn(where, f"{_show(value)} is not {rule.describe()}; {fallback}")
            return False, None


def check_settings(defaults: dict[str, Any], user: dict[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """(the merged settings every consumer reads, the warnings about the user's file).

    The merge starts from the defaults; each of the user's values replaces its default
    only when it passes its rule. Unknown keys and sections pass through as they are.
    """
    c = _Checker(source)
    data = copy.deepcopy(defaults)
    for section, table in user.items():
        where = f"[{_key(section)}]"
        if section in defaults and isinstance(defaults[section], dict):
            if not isinstance(table, dict):
                c.warn(where, f"should be a table, not {_show(table)}; using the defaults")
                continue
            data[section] = _check_section(c, section, defaults[section], table)
        else:
            c.warn(where, "unknown section (kept, but this Cattery does not use it)")
            data[section] = copy.deepcopy(table)
    return data, c.finish()


def _check_section(c: _Checker, section: str, defaults: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(defaults)
    for key, value in table.items():
        where = f"[{section}] {_key(key)}"
        if section == "sampler" and key in SAMPLER:
            ok, checked = c.value(where, SAMPLER[key], value, "the preset's value is used")
        elif section in FREE_TABLES:
            ok, checked = c.value(where, FREE_TABLES[section], value, "the default keys are used")
        elif section == "model_settings":
            ok, checked = _check_model_file(c, key, value)
        elif section == "engines":
            ok, checked = _check_engine(c, key, value)
        elif key in defaults:
            default = defaults[key]
            rule = rule_from_default(section, key, default)
            ok, checked = c.value(where, rule, value, f"using the default ({_show(default)})")
        else:
            c.warn(where, "unknown key (kept, but this Cattery does not use it)")
            ok, checked = True, copy.deepcopy(value)
        if ok:
            out[key] = checked
    return out


def _check_engine(c: _Checker, name: str, value: Any) -> tuple[bool, Any]:
    where = f"[engines.{_key(name)}]"
    if not isinstance(value, dict):
        c.warn(where, f"should be a table (url, model, api_key_env, ctx, tokenizer), not {_show(value)}; ignored")
        return False, None
    if not ENGINE_NAME.fullmatch(name):
        c.warn(where, "an engine's name is letters, digits, '.', '_' and '-'; ignored")
        return False, None
    out = _check_keys(c, where, ENGINE, value, keep_unknown=False)
    if "url" not in out:
        c.warn(where, "has no usable url; ignored")
        return False, None
    return True, out


def _check_model_file(c: _Checker, name: str, value: Any) -> tuple[bool, Any]:
    where = f"[model_settings] {_key(repr(name))}"
    if not isinstance(value, dict):
        c.warn(where, f"should be a table of load settings, not {_show(value)}; ignored")
        return False, None
    return True, _check_keys(c, where, MODEL_FILE, value, keep_unknown=True)


def _check_keys(
    c: _Checker, where: str, rules: dict[str, Rule], value: dict[str, Any], *, keep_unknown: bool
) -> dict[str, Any]:
    """A named table's keys, each by its rule (a refused value is left out, with a warning); an
    unknown key is warned about and kept (`keep_unknown`: a newer Cattery may know it) or dropped."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        rule = rules.get(key)
        if rule is None:
            said = "unknown key (kept, but this Cattery does not use it)" if keep_unknown else "unknown key (not used)"
            c.warn(f"{where} {_key(key)}", said)
            if keep_unknown:
                out[key] = copy.deepcopy(item)
            continue
        ok, checked = c.value(f"{where} {_key(key)}", rule, item, "not used")
        if ok:
            out[key] = checked
    return out
