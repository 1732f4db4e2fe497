"""Which system prompt a chat starts from: the text given for this run, else the preset chosen for
the chat, else the one chosen for its character, else the settings' (`[chat] system_preset`), else
the settings' own text (`[chat] system`).

A chat's choice lives in its `extra` (`system_preset`), a character's in the store's state table
(`system_preset:` + the card's reference), so neither needs a schema change. A choice whose preset is
gone or broken is skipped with a warning and the next one down is used: a chat always opens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.errors import CatteryError

if TYPE_CHECKING:
    from app.session.workspace import Workspace

CHAT_KEY = "system_preset"
STATE_PREFIX = "system_preset:"
MAX_NAME = 256  # a stored name longer than this is not one Cattery wrote
_WHERE = {"chat": "this chat", "character": "this character", "settings": "every chat ([chat] system_preset)"}


@dataclass
class SystemChoice:
    text: str | None
    post_history: str | None = None
    preset: str | None = None  # the preset's name, when one was used
    scope: str = "settings"  # "command line", "chat", "character" or "settings"
    warnings: list[str] = field(default_factory=list)


def _clean(value: Any) -> str:
    return value if isinstance(value, str) and len(value) <= MAX_NAME else ""


def chat_preset(ws: Workspace, chat_id: int | None) -> str:
    """The preset chosen for this chat ("" when none)."""
    if chat_id is None or not ws.paths.chats_db.exists():
        return ""
    return _clean(ws.store.chat(chat_id)["extra"].get(CHAT_KEY))


def character_preset(ws: Workspace, card_ref: str | None) -> str:
    """The preset chosen for this character ("" when none)."""
    if not card_ref or not ws.paths.chats_db.exists():
        return ""
    return _clean(ws.store.get_state(STATE_PREFIX + card_ref, ""))


def _checked(name: str) -> str:
    """`name` when it names a preset that loads ("" clears a choice); else the one-line error."""
    if name:
        from app.prompt.presets import get_preset

        get_preset(name)
    return name


def set_chat_preset(ws: Workspace, chat_id: int, name: str) -> None:
    if not ws.store.has_chat(chat_id):
        raise CatteryError(f"no chat with id {chat_id} (`cattery chats list`)")
    ws.store.update_chat_extra(chat_id, **{CHAT_KEY: _checked(name)})


def set_character_preset(ws: Workspace, card_ref: str, name: str) -> None:
    ws.store.set_state(STATE_PREFIX + card_ref, _checked(name))


def set_default_preset(ws: Workspace, name: str) -> str | None:
    """`[chat] system_preset` in the settings; the error line when they cannot be saved."""
    ws.settings.set("chat", "system_preset", _checked(name))
    return ws.save_settings()


def resolve_system(
    ws: Workspace, *, system: str | None = None, card_ref: str | None = None, chat_id: int | None = None
) -> SystemChoice:
    """The system prompt (and a preset's post-history instructions) a chat starts from."""
    if system is not None:
        return SystemChoice(system or None, scope="command line")
    from app.prompt.presets import get_preset

    warnings: list[str] = []
    levels: list[tuple[str, Any]] = [
        ("chat", lambda: chat_preset(ws, chat_id)),
        ("character", lambda: character_preset(ws, card_ref)),
        ("settings", lambda: ws.settings.chat.system_preset),
    ]
    for scope, chosen in levels:
        try:
            name = chosen()
            if not name:
                continue
            preset = get_preset(name)
        except CatteryError as exc:  # a gone or broken preset, a database that cannot be read
            warnings.append(f"the system prompt chosen for {_WHERE[scope]} is skipped: {exc}")
            continue
        return SystemChoice(preset.text or None, preset.post_history or None, preset.name, scope, warnings)
    return SystemChoice(ws.settings.chat.system or None, warnings=warnings)
