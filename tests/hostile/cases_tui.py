"""The worst cases of the full-screen app's own parsing (app/tui), for bench/hostile.py and the tests.

The app parses little itself: the [keys] table of settings.toml (app/tui/keys.py) and
the text it shows, which never goes through a markup parser (app/tui/plain.py). The
chat store, cards and settings values have their own doors.
"""

from __future__ import annotations

from collections.abc import Callable

from app.tui.keys import parse_keys, read_keymap
from app.tui.plain import cell, plain


def _many_unknown_actions() -> object:
    """A [keys] table of 200,000 entries no action has: a bounded report, nothing kept."""
    keymap, warnings = read_keymap({f"chat.nothing_{i}": "ctrl+a" for i in range(200_000)}, "settings.toml")
    assert not keymap and len(warnings) <= 21
    return warnings


def _huge_key_list() -> object:
    """One action bound to a million keys (the schema allows 1,000 characters; this is past it)."""
    return parse_keys(",".join(["ctrl+alt+shift+f12"] * 1_000_000))


def _deep_modifiers() -> object:
    """One key with 100,000 modifiers."""
    return parse_keys("ctrl+" * 100_000 + "a")


def _markup_name() -> object:
    """A 4 MB card name made of markup tags, as a widget and a table cell would show it."""
    name = "[/][@click=app.quit][link=file:///etc/passwd][$accent]" * 80_000
    return len(plain(name).plain) + len(cell(name).plain)


WORST_CASES: list[tuple[str, Callable[[], object]]] = [
    ("[keys] table of 200,000 unknown actions", _many_unknown_actions),
    ("[keys] value of 1,000,000 keys", _huge_key_list),
    ("[keys] key with 100,000 modifiers", _deep_modifiers),
    ("4 MB name of markup tags shown in a widget", _markup_name),
]
