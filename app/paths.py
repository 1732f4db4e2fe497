"""Where Cattery keeps its files.

All locations come from platformdirs so they follow each OS's conventions (XDG on
Linux). `CATTERY_HOME` puts everything under one folder instead, which tests and
portable installs use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "cattery"


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    data_dir: Path
    cache_dir: Path
    log_dir: Path

    @property
    def settings_file(self) -> Path:
        return self.config_dir / "settings.toml"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def chats_db(self) -> Path:
        return self.data_dir / "chats.sqlite3"

    @property
    def cards_dir(self) -> Path:
        return self.data_dir / "cards"

    @property
    def lorebooks_dir(self) -> Path:
        return self.data_dir / "lorebooks"

    @property
    def snapshots_dir(self) -> Path:
        """Chats' KV-cache snapshots: a cache (each can be evaluated again), kept under a size limit."""
        return self.cache_dir / "snapshots"

    @property
    def llama_log(self) -> Path:
        return self.log_dir / "llama.log"

    def as_dict(self) -> dict[str, Path]:
        return {
            "config": self.config_dir,
            "settings": self.settings_file,
            "data": self.data_dir,
            "models": self.models_dir,
            "chats": self.chats_db,
            "cards": self.cards_dir,
            "lorebooks": self.lorebooks_dir,
            "cache": self.cache_dir,
            "snapshots": self.snapshots_dir,
            "logs": self.log_dir,
        }


def get_paths() -> Paths:
    home = os.environ.get("CATTERY_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(root / "config", root / "data", root / "cache", root / "logs")
    import platformdirs

    dirs = platformdirs.PlatformDirs(APP_NAME, appauthor=False)
    return Paths(
        Path(dirs.user_config_dir),
        Path(dirs.user_data_dir),
        Path(dirs.user_cache_dir),
        Path(dirs.user_log_dir),
    )
