"""The settings file: defaults from `assets/settings.default.toml`, overridden by the user's TOML.

Only the user's own keys are written back, so a new default in a later release
reaches users who never changed that key.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from app.assets import asset_path
from app.atomic import write_text_atomic
from app.errors import SettingsError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read: {exc.strerror}") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Settings:
    """Merged view of defaults and the user's file; `set` + `save` persist a change."""

    def __init__(self, path: Path, user: dict[str, Any] | None = None) -> None:
        self.path = path
        self.defaults = _read_toml(asset_path("settings.default.toml"))
        self.user: dict[str, Any] = user or {}
        self.data = _merge(self.defaults, self.user)

    @classmethod
    def load(cls, path: Path) -> Settings:
        user = _read_toml(path) if path.exists() else {}
        return cls(path, user)

    def section(self, name: str) -> dict[str, Any]:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise SettingsError(f"{self.path}: [{name}] must be a table")
        return value

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return self.section(section).get(key, default)

    def set(self, section: str, key: str, value: Any) -> None:
        self.user.setdefault(section, {})[key] = value
        self.data.setdefault(section, {})[key] = value

    def save(self) -> None:
        import tomli_w

        write_text_atomic(self.path, tomli_w.dumps(self.user))
