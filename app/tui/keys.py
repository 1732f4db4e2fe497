"""Key bindings as data: `assets/keys.toml` says which key does what, the settings remap them.

Every binding has an id (`chat.regenerate`); Textual's keymap replaces the keys of
a binding by its id, so a user's `[keys]` table in settings.toml changes a key
everywhere it is used, the footer and the help screen included.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cache
from typing import Any

from textual.binding import Binding

from app.assets import asset_path
from app.errors import SettingsError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTION_TITLES = {
    "app": "Everywhere",
    "chat": "Chat",
    "input": "Writing a message",
    "message": "A selected message",
    "editor": "Editing a message",
    "characters": "Characters",
    "models": "Models",
    "hub": "The hub",
    "workshop": "The workshop",
    "chats": "Chats",
    "lore": "World Info",
    "settings": "Settings",
}


@dataclass(frozen=True)
class KeyAction:
    id: str
    keys: str
    action: str
    text: str
    show: bool
    label: str = ""
    priority: bool = False  # before the focused widget's own keys (a text box binds F6 and F7)

    @property
    def section(self) -> str:
        return self.id.partition(".")[0]


@cache
def key_table() -> dict[str, list[KeyAction]]:
    with asset_path("keys.toml").open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return {
        section: [
            KeyAction(
                f"{section}.{name}",
                v["keys"],
                v["action"],
                v["text"],
                bool(v.get("show", False)),
                v.get("label", v["text"]),
                bool(v.get("priority", False)),
            )
            for name, v in actions.items()
        ]
        for section, actions in data.items()
    }


def bindings(section: str) -> list[Binding]:
    return [
        Binding(a.keys, a.action, a.label, show=a.show, id=a.id, tooltip=a.text, priority=a.priority)
        for a in key_table()[section]
    ]


def action(action_id: str) -> KeyAction:
    section = action_id.partition(".")[0]
    for a in key_table().get(section, []):
        if a.id == action_id:
            return a
    raise KeyError(action_id)


MODIFIERS = frozenset({"ctrl", "alt", "shift", "super", "meta", "hyper"})
MAX_KEY_WARNINGS = 20  # lines about one [keys] table: enough to fix it, never a screenful
# No one binds an action to more keys than this; the settings schema allows the same length.
MAX_KEYS_TEXT = 1000
MAX_KEYS_PER_ACTION = 32


@cache
def _named_keys() -> frozenset[str]:
    """Key names Textual reports for a key press (besides single characters)."""
    from textual.keys import KEY_NAME_REPLACEMENTS, Keys

    names = {k.value.rpartition("+")[2] for k in Keys}
    names.update(KEY_NAME_REPLACEMENTS.values())
    return frozenset(n for n in names if len(n) > 1 and not n.startswith("<"))


def _key_problem(key: str) -> str | None:
    """Why Textual would never match `key` (one key, modifiers and all), or None when it is one it can."""
    from textual.keys import _character_to_key, key_to_character

    if not key:
        return "an empty key"
    *mods, name = key.split("+")
    if not name:
        return f"{key!r} has no key after its last +"
    bad = [m for m in mods if m.lower() not in MODIFIERS]
    if bad:
        return f"{bad[0]!r} is not a modifier (ctrl, alt, shift, super, meta)"
    if len({m.lower() for m in mods}) != len(mods):
        return f"{key!r} repeats a modifier"
    if len(name) == 1:
        return None if name.isprintable() and not name.isspace() else f"{name!r} is not a key"
    lowered = name.lower()
    if lowered in _named_keys():
        return None
    char = key_to_character(lowered)
    if char is not None and _character_to_key(char) == lowered:
        return None  # a named character: question_mark, comma, full_stop…
    return f"{name!r} is not a key name (f1…f24, escape, enter, up, pageup, a, question_mark…)"


def parse_keys(value: Any) -> tuple[str | None, str]:
    """(the keys as Textual takes them, "") or (None, why not) for one [keys] value."""
    from textual.keys import _character_to_key

    if isinstance(value, list):
        if len(value) > MAX_KEYS_PER_ACTION or not all(isinstance(v, str) for v in value):
            return None, f"a list of at most {MAX_KEYS_PER_ACTION} key names, each text"
        value = ",".join(value)
    if not isinstance(value, str) or not value.strip():
        return None, 'not a key name, like "ctrl+r"'
    if len(value) > MAX_KEYS_TEXT or value.count(",") >= MAX_KEYS_PER_ACTION:
        return None, f"more than {MAX_KEYS_PER_ACTION} keys or {MAX_KEYS_TEXT} characters for one action"
    keys = []
    for raw in value.split(","):
        raw = raw.strip()
        if not raw:
            continue
        *mods, name = raw.split("+")
        # A lone character keeps its case ("D" is shift+d); with a modifier Textual says "ctrl+r".
        name = name if len(name) == 1 and not mods else name.lower()
        if len(name) == 1 and name.isprintable() and not name.isspace():
            name = _character_to_key(name)  # as Textual names it: "?" is question_mark
        key = "+".join([*(m.lower() for m in mods), name])
        problem = _key_problem(key)
        if problem:
            return None, problem
        keys.append(key)
    if not keys:
        return None, 'not a key name, like "ctrl+r"'
    return ",".join(dict.fromkeys(keys)), ""


def _shown(text: str, limit: int = 60) -> str:
    """Outside text inside a one-line warning: short, every control character (newlines too) visible."""
    from app.terminal import visible

    text = text if len(text) <= limit else text[:limit] + "…"
    return visible(text).replace("\n", "\\n").replace("\t", "\\t")


def read_keymap(keys: dict[str, Any], source: str = "settings") -> tuple[dict[str, str], list[str]]:
    """The user's remapped keys that can be used, and one warning line for each that cannot.

    A typo in settings.toml costs that one key (its default stays), never the app:
    an unknown action id or a key Textual would never report is left out and named.
    """
    known = {a.id for actions in key_table().values() for a in actions}
    out: dict[str, str] = {}
    warnings: list[str] = []
    unsaid = 0

    def warn(line: str) -> None:
        nonlocal unsaid
        if len(warnings) < MAX_KEY_WARNINGS:
            warnings.append(line)
        else:
            unsaid += 1

    for key_id, value in keys.items():
        where = f"{source}: [keys] {_shown(str(key_id))}"
        if key_id not in known:
            warn(f"{where}: no such action (F1 lists them); ignored")
            continue
        parsed, why = parse_keys(value)
        if parsed is None:
            warn(f"{where}: {_shown(why, 120)}; the default key ({action(key_id).keys}) is kept")
            continue
        out[key_id] = parsed
    if unsaid:
        warnings.append(f"{source}: [keys]: and {unsaid:,} more problems like these")
    return out, warnings


def keymap_from_settings(keys: dict[str, Any], source: str = "settings") -> dict[str, str]:
    """The usable part of a [keys] table (`read_keymap` says what was left out and why)."""
    return read_keymap(keys, source)[0]


def check_keys(action_id: str, value: str) -> str:
    """Keys typed for one action (the Settings screen): the keys as Textual takes them, or a one-line error."""
    try:
        action(action_id)
    except KeyError:
        raise SettingsError(f"[keys] has no action {_shown(action_id)!r} (F1 lists them)") from None
    parsed, why = parse_keys(value)
    if parsed is None:
        raise SettingsError(f"keys for {action_id}: {_shown(why, 120)}")
    return parsed


def keys_of(action_id: str, keymap: dict[str, str]) -> str:
    """The keys an action answers to now, for the help screen and hints."""
    return keymap.get(action_id) or action(action_id).keys


def display(keys: str) -> str:
    """`ctrl+r,f9` as a person reads it: `Ctrl+R / F9`."""
    from textual.keys import format_key

    parts = []
    for key in keys.split(","):
        *mods, last = key.strip().split("+")
        name = format_key(last)
        if len(name) == 1 and mods:
            name = name.upper()
        elif len(name) > 1 and name.isascii():
            name = name.capitalize() if len(name) > 2 else name.upper()
        parts.append("+".join([*(m.capitalize() for m in mods), name]))
    return " / ".join(parts)


class ScreenKeysFirst:
    """A screen mixin: its footer lists the screen's own keys first, then the app's in keys.toml order.

    Textual lists keys in the order the focus chain meets them, from the focused widget up.
    A text box binds F6 and F7 itself, so the app's F6 and F7 (which win over it) came first
    in the chat's footer, before the chat's keys, and F8 fell off the end. Only the order of
    the list changes: which key does what is Textual's dispatch, untouched.
    """

    @property
    def active_bindings(self) -> dict[str, Any]:
        found: dict[str, Any] = super().active_bindings  # type: ignore[misc]
        app = self.app  # type: ignore[attr-defined]
        rank = {a.id: i for i, a in enumerate(key_table()["app"])}
        own = {key: b for key, b in found.items() if b.node is not app}
        shared = sorted(
            ((key, b) for key, b in found.items() if b.node is app),
            key=lambda kb: rank.get(kb[1].binding.id or "", len(rank)),
        )
        return {**own, **dict(shared)}
