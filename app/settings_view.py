"""The settings as typed values: `settings.chat.max_tokens` rather than
`settings.get("chat", "max_tokens", 512)`.

Each call site used to repeat a key's default beside its name, so a default changed
in `assets/settings.default.toml` did not reach the places that carried their own
copy. These classes have no defaults of their own: every value comes from the merged
table that `settings_schema.check_settings` built (the defaults file, then the user's
checked keys), so the file stays the one place a default lives, and the types here are
those the schema promises. A test checks that the fields and the file's keys agree.

Free-form tables (`[sampler]`, `[model_settings]`, `[keys]`, `[engines]`) stay dictionaries:
their keys are the user's own names.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ModelPrefs:
    default: str
    last_used: str
    ctx: int
    gpu_layers: int | str  # a layer count, "auto" or "all" (parse_gpu_layers reads it)
    threads: int
    threads_batch: int
    batch: int
    flash_attn: str
    cache_type_k: str
    cache_type_v: str
    mmap: bool
    mlock: bool
    dirs: list[str]


@dataclass(frozen=True)
class ChatPrefs:
    system: str
    system_preset: str  # a system-prompt preset's name; "" is `system`
    prefer_card_prompt: bool
    char_name: str
    format: str
    card: str
    pin_examples: bool
    lorebooks: list[str]
    preset: str
    max_tokens: int
    thinking: bool  # a thinking model may think (off: each reply opens with an empty block)
    keep_reasoning: bool
    thinking_budget: int  # tokens; 0: no budget


@dataclass(frozen=True)
class LorePrefs:
    placement: str


@dataclass(frozen=True)
class ChatsPrefs:
    busy_timeout: float


@dataclass(frozen=True)
class SnapshotPrefs:
    enabled: bool
    disk_limit_mb: int
    memory_limit_mb: int
    keep: str  # "window" or "all"


@dataclass(frozen=True)
class PersonaPrefs:
    name: str
    description: str


@dataclass(frozen=True)
class UiPrefs:
    theme: str
    images: str
    cursor_blink: bool
    shown_messages: int


# Section name → its class: what `Settings` exposes as attributes.
SECTIONS: dict[str, type] = {
    "model": ModelPrefs,
    "chat": ChatPrefs,
    "lore": LorePrefs,
    "chats": ChatsPrefs,
    "snapshots": SnapshotPrefs,
    "persona": PersonaPrefs,
    "ui": UiPrefs,
}


def typed(cls: type[T], table: dict[str, Any]) -> T:
    """One section as its class. A key missing from the merged table is a bug of the
    defaults file (the test catches it), not the user's: their bad values were already
    replaced by defaults."""
    values = {f.name: table[f.name] for f in fields(cls)}  # type: ignore[arg-type]
    if isinstance(values.get("lorebooks"), list):
        values["lorebooks"] = list(values["lorebooks"])
    if isinstance(values.get("dirs"), list):
        values["dirs"] = list(values["dirs"])
    return cls(**values)
