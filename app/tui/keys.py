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


def keymap_from_settings(keys: dict[str, Any], source: str = "settings") -> dict[str, str]:
    """The user's remapped keys, checked: an unknown action id is an error naming it."""
    known = {a.id for actions in key_table().values() for a in actions}
    out: dict[str, str] = {}
    for key_id, value in keys.items():
        if key_id not in known:
            raise SettingsError(f"{source}: [keys] has no action {key_id!r} (F1 in the app lists them)")
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f'{source}: [keys] {key_id} must be a key name, like "ctrl+r"')
        out[key_id] = ",".join(k.strip() for k in value.split(",") if k.strip())
    return out


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
