"""What the user asked for when starting the app: a model, a character, overrides for this run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.engine.options import SamplerSettings


@dataclass
class Launch:
    model: Path | None = None  # None: pick as `cattery` does (default, last used, bundled)
    load_overrides: dict[str, Any] = field(default_factory=dict)
    card_ref: str | None = None
    card_explicit: bool = False  # --card given (even "none"): open a chat with that character
    format: str | None = None
    system: str | None = None
    user: str | None = None
    char: str | None = None
    lorebooks: list[str] = field(default_factory=list)
    lore_placement: str | None = None
    note: dict[str, Any] | None = None  # the Author's Note options given (text, depth, every, role): for the first chat
    sampler: SamplerSettings | None = None
    new_chat: bool = False
    chat_id: int | None = None  # --chat: this saved chat (checked to exist before the app starts)
    load_model: bool = True  # tests and benchmarks may start the app without loading one
