"""The settings file: defaults from `assets/settings.default.toml`, overridden by the user's TOML.

Only the user's own keys are written back, so a new default in a later release
reaches users who never changed that key.

The user's file is outside data (`app/settings_schema.py` checks every value: a bad
one costs a warning and its default, never a traceback). A file that cannot be read
as TOML at all is refused with one line, and never written over: a save re-reads the
file and changes only the keys this run changed, so an edit made while the app runs
survives, and a broken file stays as the user left it until they fix it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.assets import asset_path
from app.atomic import write_text_atomic
from app.errors import CatteryError, DiskError, SettingsError
from app.settings_schema import check_settings
from app.settings_view import (
    ChatPrefs,
    ChatsPrefs,
    LorePrefs,
    ModelPrefs,
    PersonaPrefs,
    SnapshotPrefs,
    UiPrefs,
    typed,
)
from app.untrusted import parse_toml, read_bounded

# An honest settings file is a few KB (a long system prompt, a few dozen remapped
# keys); a megabyte is already absurd, and parsing it stays well inside the bounds.
MAX_SETTINGS_FILE = 1 << 20
# Saving holds the lock for a read and a rename; another process holding it longer is stuck.
LOCK_SECONDS = 5.0


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    path = asset_path("settings.default.toml")
    return parse_toml(path.read_bytes(), str(path))


def parse_settings(data: bytes, source: str) -> dict[str, Any]:
    """TOML with the depth bound, letting `inf` and `nan` through to the schema: one bad
    number costs its key a warning, not the whole file."""
    try:
        return parse_toml(data, source, allow_nonfinite=True)
    except CatteryError as exc:
        raise SettingsError(str(exc)) from None


def read_user_file(path: Path) -> dict[str, Any]:
    """The user's settings as written (unchecked values); {} when there is no file."""
    if not path.exists() and not path.is_symlink():
        return {}
    if path.exists() and not path.is_dir() and not stat.S_ISREG(path.stat().st_mode):
        raise SettingsError(f"{path}: not a regular file")  # a FIFO would block the read, a device never end
    try:
        data = read_bounded(path, MAX_SETTINGS_FILE, "settings file")
    except CatteryError as exc:
        raise SettingsError(str(exc)) from None
    return parse_settings(data, str(path))


def apply_changes(current: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """`current` (the file as it is now) with what changed from `before` to `after` (this run's edits).

    Keys this run did not touch keep whatever the file holds now, whoever wrote it.
    """
    out = copy.deepcopy(current)
    for key in [*before, *(k for k in after if k not in before)]:
        old, new = before.get(key, _MISSING), after.get(key, _MISSING)
        if old == new:
            continue
        if new is _MISSING:
            out.pop(key, None)
        elif isinstance(new, dict) and isinstance(out.get(key), dict):  # a table: only its changed keys
            out[key] = apply_changes(out[key], old if isinstance(old, dict) else {}, new)
        else:
            out[key] = copy.deepcopy(new)
    return out


_MISSING: Any = object()


@contextlib.contextmanager
def _save_lock(folder: Path) -> Iterator[None]:
    """One saver at a time in the settings folder, so two runs' read-change-write cannot interleave."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: saves are rare and tiny
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        deadline = time.monotonic() + LOCK_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SettingsError(f"{folder}: another process is saving the settings; not saved") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


class Settings:
    """Merged view of defaults and the user's file; `set` + `save` persist a change.

    `warnings`: one line for each value of the user's file that was not used (and why),
    for the command line and the app to show.
    """

    def __init__(self, path: Path, user: dict[str, Any] | None = None) -> None:
        self.path = path
        self.defaults = copy.deepcopy(_defaults())
        self._adopt(user or {})

    def _adopt(self, user: dict[str, Any]) -> None:
        self.user: dict[str, Any] = user
        self._saved = copy.deepcopy(user)  # the file as last read or written: what `save` compares with
        self.data, self.warnings = check_settings(self.defaults, user, str(self.path))

    @classmethod
    def load(cls, path: Path) -> Settings:
        return cls(path, read_user_file(path))

    def section(self, name: str) -> dict[str, Any]:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise SettingsError(f"{self.path}: [{name}] must be a table")
        return value

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return self.section(section).get(key, default)

    # Typed sections (app/settings_view.py): read fresh each time, so a `set` shows at once.
    @property
    def model(self) -> ModelPrefs:
        return typed(ModelPrefs, self.section("model"))

    @property
    def chat(self) -> ChatPrefs:
        return typed(ChatPrefs, self.section("chat"))

    @property
    def lore(self) -> LorePrefs:
        return typed(LorePrefs, self.section("lore"))

    @property
    def chats(self) -> ChatsPrefs:
        return typed(ChatsPrefs, self.section("chats"))

    @property
    def snapshots(self) -> SnapshotPrefs:
        return typed(SnapshotPrefs, self.section("snapshots"))

    @property
    def persona(self) -> PersonaPrefs:
        return typed(PersonaPrefs, self.section("persona"))

    @property
    def ui(self) -> UiPrefs:
        return typed(UiPrefs, self.section("ui"))

    def set(self, section: str, key: str, value: Any) -> None:
        for table in (self.user, self.data):
            if not isinstance(table.get(section), dict):
                table[section] = {}
            table[section][key] = value

    def save(self) -> None:
        """Write this run's changes into the file as it is now (a `CatteryError` when that cannot be done)."""
        import tomli_w

        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with _save_lock(folder):
                try:
                    current = read_user_file(self.path)
                except SettingsError as exc:  # broken by hand since it was read: never written over
                    raise SettingsError(f"{exc} (left as it is: fix it, then save again)") from None
                merged = apply_changes(current, self._saved, self.user)
                if merged != current or not self.path.exists():
                    write_text_atomic(self.path, tomli_w.dumps(merged))
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise DiskError(f"cannot save the settings in {folder}: {reason}; {self.path.name} is unchanged") from None
        self._adopt(merged)
