"""Locate the data files shipped in `assets/` (installed as the `cattery_assets` package)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def asset_path(*parts: str) -> Path:
    root = resources.files("cattery_assets")
    return Path(str(root.joinpath(*parts)))
