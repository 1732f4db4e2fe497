"""SillyTavern chat files (JSONL) in and out, and Markdown export.

A SillyTavern chat file is a header line (`user_name`, `character_name`, `create_date`,
`chat_metadata`) and one JSON object per message (`name`, `is_user`, `send_date`,
`mes`, `swipes`, `swipe_id`, `extra`). System notes (`is_system`) become system
messages.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from app.atomic import write_text_atomic
from app.chats.store import ChatStore, NewMessage
from app.chats.titles import title_from
from app.errors import InputError
from app.untrusted import json_cost, parse_json

# The bounds of an imported chat file. The longest honest SillyTavern chats seen are
# tens of MB (thousands of messages, each with a few swipes); the bounds sit above
# those and keep a whole import inside 5 s and 256 MB (bench/hostile.py measures the
# worst cases from tests/hostile/cases_chats.py).
MAX_CHAT_FILE = 32 * 1024 * 1024
MAX_LINE = 8 * 1024 * 1024  # one message with all its swipes
MAX_MESSAGES = 50_000
MAX_LINES = 2 * MAX_MESSAGES  # blank ones included
MAX_SWIPES = 1_000  # alternatives of one message
MAX_NAME = 1_000  # characters in a name
MAX_LINE_VALUES = 1_000_000  # JSON values in one line (json_cost counts a list item once, a member three times)
MAX_ALTERNATIVES = 200_000  # swipes in the whole file: rows to store


def _st_date(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _read_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of each non-empty line, within the bounds, one at a time."""
    source = str(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the open, a device never end
            what = "a folder" if path.is_dir() else "not a regular file"
            raise InputError(f"{source}: {what}, not a chat file")
        f = path.open("rb")
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise InputError(f"{source}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    count = total = 0
    with f:
        n = 0
        while True:
            try:
                raw = f.readline(MAX_LINE + 1)
            except OSError as exc:
                raise InputError(f"{source}: cannot read: {exc.strerror or type(exc).__name__}") from None
            if not raw:
                break
            n += 1
            if n > MAX_LINES:  # blank lines too: 32 MiB of newlines is 33 million of them
                raise InputError(f"{source}: more than {MAX_LINES:,} lines")
            total += len(raw)
            if total > MAX_CHAT_FILE:
                raise InputError(f"{source}: larger than a chat file can be ({MAX_CHAT_FILE // 2**20} MiB)")
            if len(raw) > MAX_LINE:
                raise InputError(f"{source}: line {n} is longer than a message can be ({MAX_LINE // 2**20} MiB)")
            # Each value parsed costs ~70 bytes however short its text ("{}," is a whole dict):
            # its separators bound the cost from above, before any value is made.
            if json_cost(raw) > 2 * MAX_LINE_VALUES:
                raise InputError(f"{source}: line {n} holds more than {MAX_LINE_VALUES:,} values")
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a BOM
            if not raw.strip():
                continue
            count += 1
            if count > MAX_MESSAGES + 1:  # the header, then the messages
                raise InputError(f"{source}: more than {MAX_MESSAGES:,} messages")
            where = f"{source}: line {n}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{where}: not UTF-8 text (byte {exc.start})") from None
            try:
                obj = parse_json(text, where)
            except InputError as exc:  # one wording for every way a line fails as JSON
                detail = str(exc).removeprefix(f"{where}: ").removeprefix("not valid JSON: ")
                raise InputError(f"{where} is not JSON ({detail})") from None
            yield n, obj


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"text of {len(value):,} characters" if len(value) > 40 else f"text {value!r}"
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def _field(obj: dict[str, Any], key: str, kinds: tuple[type, ...], expected: str, where: str) -> Any:
    """`obj[key]` when it is of `kinds` (None when missing or null), else one line naming it."""
    value = obj.get(key)
    if value is None:
        return None
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise InputError(f"{where}: {key} should be {expected}, not {_describe(value)}")
    return value


def _name(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = _field(obj, key, (str,), "text", where)
    if value is not None and len(value) > MAX_NAME:
        raise InputError(f"{where}: {key} is {len(value):,} characters, longer than a name can be ({MAX_NAME:,})")
    return value


def _message(obj: Any, where: str) -> NewMessage:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: not a JSON object")
    mes = obj.get("mes")
    if not isinstance(mes, str):
        raise InputError(f"{where}: the message has no text ('mes')")
    name = _name(obj, "name", where)
    is_user = _field(obj, "is_user", (bool,), "true or false", where)
    is_system = _field(obj, "is_system", (bool,), "true or false", where)
    swipes = _field(obj, "swipes", (list,), "a list of texts", where) or [mes]
    if len(swipes) > MAX_SWIPES:
        raise InputError(f"{where}: {len(swipes):,} swipes, more than a message can have ({MAX_SWIPES:,})")
    for i, text in enumerate(swipes):
        if not isinstance(text, str):
            raise InputError(f"{where}: swipe {i} should be text, not {_describe(text)}")
    active = _field(obj, "swipe_id", (int,), "a whole number", where)
    active = active if active is not None and 0 <= active < len(swipes) else 0
    extra = _field(obj, "extra", (dict,), "an object", where) or {}
    swipes = list(swipes)
    swipes[active] = mes  # `mes` wins over a stale swipe list
    role = "system" if is_system else ("user" if is_user else "assistant")
    rest = {k: v for k, v in obj.items() if k not in ("mes", "swipes", "swipe_id")}  # kept as it came
    reasoning = _reasoning(obj, extra, len(swipes), active, where)
    return NewMessage(
        role,
        swipes,
        name,
        active,
        _dumps({"sillytavern": rest}),
        _dumps({"sillytavern_extra": extra}),
        reasoning=reasoning,
    )


def _reasoning(obj: dict[str, Any], extra: dict[str, Any], n: int, active: int, where: str) -> list[str]:
    """A thinking model's reasoning per swipe, where SillyTavern keeps it: `extra.reasoning` for the
    message shown, `swipe_info[i].extra.reasoning` for each swipe."""
    out = [""] * n
    info = obj.get("swipe_info")
    if isinstance(info, list):
        for i, item in enumerate(info[:n]):
            text = item.get("extra", {}).get("reasoning") if isinstance(item, dict) else None
            if isinstance(item, dict) and isinstance(item.get("extra"), dict) and isinstance(text, str):
                out[i] = text
    shown = extra.get("reasoning")
    if shown is not None and not isinstance(shown, str):
        raise InputError(f"{where}: extra.reasoning should be text, not {_describe(shown)}")
    if shown:
        out[active] = shown
    return out if any(out) else []


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def read_st_chat(path: Path) -> tuple[dict[str, Any], list[NewMessage]]:
    """(the header, the messages) of a SillyTavern chat file, every field checked; nothing stored."""
    source = str(path)
    lines = _read_lines(path)
    first, header = next(lines, (0, None))
    if not isinstance(header, dict) or "mes" in header:
        raise InputError(f"{source}: not a SillyTavern chat file (no header line)")
    where = f"{source}: line {first}"
    names: dict[str, Any] = {key: _name(header, key, where) for key in ("user_name", "character_name")}
    names["author_note"] = _st_note(header.get("chat_metadata"))
    messages: list[NewMessage] = []
    alternatives = 0
    for line, obj in lines:
        messages.append(_message(obj, f"{source}: line {line}"))
        alternatives += len(messages[-1].swipes)
        if alternatives > MAX_ALTERNATIVES:
            raise InputError(f"{source}: more than {MAX_ALTERNATIVES:,} swipes in all")
    return names, messages


_ST_ROLES = {0: "system", 1: "user", 2: "assistant"}  # SillyTavern's extension_prompt_roles
MAX_NOTE = 100_000  # characters of an Author's Note (app/session/authors_note.py reads it again, leniently)


def _st_number(value: Any, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return default
    return int(max(0, min(10_000, value)))


def _st_note(meta: Any) -> dict[str, Any] | None:
    """SillyTavern's Author's Note from a chat file's `chat_metadata` (note_prompt, note_depth,
    note_interval, note_role), as Cattery keeps it with a chat; None when there is none."""
    if not isinstance(meta, dict):
        return None
    text = meta.get("note_prompt")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_NOTE:
        return None
    role = meta.get("note_role")
    return {
        "text": text,
        "depth": _st_number(meta.get("note_depth"), 4),
        "every": _st_number(meta.get("note_interval"), 1),
        "role": _ST_ROLES.get(role, "system") if isinstance(role, int) and not isinstance(role, bool) else "system",
    }


def _st_metadata(note: Any) -> dict[str, Any]:
    """A chat's Author's Note as SillyTavern's `chat_metadata` writes it (in the chat, at its depth)."""
    if not isinstance(note, dict) or not isinstance(note.get("text"), str) or not note["text"]:
        return {}
    roles = {v: k for k, v in _ST_ROLES.items()}
    return {
        "note_prompt": note["text"],
        "note_interval": _st_number(note.get("every"), 1),
        "note_position": 1,
        "note_depth": _st_number(note.get("depth"), 4),
        "note_role": roles.get(note.get("role"), 0),
    }


def import_st_chat(store: ChatStore, path: Path, card_ref: str | None = None) -> int:
    """Store a SillyTavern chat file as a new chat: the whole file is checked first, then
    stored in one transaction, so a bad line or a full disk leaves no half-imported chat."""
    names, messages = read_st_chat(path)
    char = names["character_name"] or ""
    # Titled by its first exchange, as a chat made here is (app/chats/titles.py); a file without
    # a character name keeps its file's name, which the person chose.
    first = title_from((m.role, m.swipes[m.active] if 0 <= m.active < len(m.swipes) else "", False) for m in messages)
    title = (first or f"{char} (imported)") if char else path.stem
    chat_id = store.insert_chat(
        title,
        messages,
        card_ref=card_ref,
        card_name=char or None,
        user_name=names["user_name"] or None,
        auto_title=bool(char),
    )
    if names["author_note"] is not None:  # the chat's Author's Note comes with it
        store.update_chat_extra(chat_id, author_note=names["author_note"])
    return chat_id


def export_st_chat(store: ChatStore, chat_id: int, path: Path) -> None:
    info = store.chat(chat_id)
    char = info["card_name"] or "Assistant"
    user = info["user_name"] or "User"
    lines = [
        json.dumps(
            {
                "user_name": user,
                "character_name": char,
                "create_date": _st_date(info["created_at"]),
                "chat_metadata": _st_metadata(info["extra"].get("author_note")),
            },
            ensure_ascii=False,
        )
    ]
    for m in store.messages(chat_id):
        st = dict(m.swipes[0].provenance.get("sillytavern", {})) if m.swipes else {}
        st.update(
            {
                "name": m.name or (user if m.role == "user" else char),
                "is_user": m.role == "user",
                "is_system": m.role == "system",
                "send_date": st.get("send_date") or _st_date(m.created_at),
                "mes": m.text,
                "swipes": [s.text for s in m.swipes],
                "swipe_id": m.active,
                "extra": st.get("extra") or {},
            }
        )
        if any(s.reasoning for s in m.swipes):  # where SillyTavern keeps a thinking model's reasoning
            st["extra"] = {**st["extra"], "reasoning": m.reasoning}
            st["swipe_info"] = [_swipe_info(s, m.created_at) for s in m.swipes]
        lines.append(json.dumps(st, ensure_ascii=False))
    write_text_atomic(path, "\n".join(lines) + "\n")


def _swipe_info(s: Any, created: float) -> dict[str, Any]:
    extra: dict[str, Any] = {"reasoning": s.reasoning} if s.reasoning else {}
    facts = s.provenance.get("reasoning")
    if s.reasoning and isinstance(facts, dict) and isinstance(facts.get("seconds"), (int, float)):
        extra["reasoning_duration"] = int(facts["seconds"] * 1000)
    return {"send_date": _st_date(created), "extra": extra}


def export_markdown(store: ChatStore, chat_id: int, path: Path) -> None:
    info = store.chat(chat_id)
    char = info["card_name"] or "Assistant"
    user = info["user_name"] or "User"
    out = [f"# {info['title']}", "", f"*{time.strftime('%Y-%m-%d %H:%M', time.localtime(info['created_at']))}*", ""]
    for m in store.messages(chat_id):
        speaker = m.name or {"user": user, "assistant": char}.get(m.role, "System")
        note = " *(stopped)*" if m.state == "stopped" else ""
        out += [f"**{speaker}:**{note}", ""]
        if m.reasoning:  # folded, as the app shows it: GitHub and most viewers unfold <details> on a click
            facts = m.swipes[m.active].provenance.get("reasoning") if m.swipes else None
            tokens = facts.get("tokens") if isinstance(facts, dict) else None
            summary = f"Thought for {tokens} tokens" if tokens else "Thinking"
            shown = m.reasoning.replace("<", "&lt;")  # its own text never closes the fold
            out += ["<details>", f"<summary>{summary}</summary>", "", shown, "", "</details>", ""]
        out += [m.text, ""]
    write_text_atomic(path, "\n".join(out))
