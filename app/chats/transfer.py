"""SillyTavern chat files (JSONL) in and out, and Markdown export.

A SillyTavern chat file is a header line (`user_name`, `character_name`, `create_date`,
`chat_metadata`) and one JSON object per message (`name`, `is_user`, `send_date`,
`mes`, `swipes`, `swipe_id`, `extra`). System notes (`is_system`) become system
messages.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from app.atomic import write_text_atomic
from app.chats.store import ChatStore
from app.errors import CatteryError

MAX_CHAT_FILE = 256 * 1024 * 1024


def _st_date(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def import_st_chat(store: ChatStore, path: Path, card_ref: str | None = None) -> int:
    source = str(path)
    try:
        if path.stat().st_size > MAX_CHAT_FILE:
            raise CatteryError(f"{source}: larger than {MAX_CHAT_FILE // 2**20} MiB")
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CatteryError(f"{source}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CatteryError(f"{source}: not UTF-8 text") from None
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CatteryError(f"{source}: line {n} is not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise CatteryError(f"{source}: line {n} is not a JSON object")
        rows.append(obj)
    if not rows or "mes" in rows[0]:
        raise CatteryError(f"{source}: not a SillyTavern chat file (no header line)")
    header, messages = rows[0], rows[1:]
    for n, m in enumerate(messages, start=2):
        if not isinstance(m.get("mes"), str):
            raise CatteryError(f"{source}: message on line {n} has no text ('mes')")
    char = str(header.get("character_name") or "")
    title = f"{char} (imported)" if char else path.stem
    chat_id = store.create_chat(title, card_ref, char or None, str(header.get("user_name") or "") or None)
    for m in messages:
        role = "system" if m.get("is_system") else ("user" if m.get("is_user") else "assistant")
        swipes = m.get("swipes") if isinstance(m.get("swipes"), list) and m.get("swipes") else [m["mes"]]
        swipes = [s if isinstance(s, str) else "" for s in swipes]
        extra = m.get("extra") if isinstance(m.get("extra"), dict) else {}
        provenance = {"sillytavern": {k: v for k, v in m.items() if k not in ("mes", "swipes", "swipe_id")}}
        mid = store.add_message(chat_id, role, swipes[0], name=m.get("name"), provenance=provenance)
        for text in swipes[1:]:
            store.add_swipe(mid, text, provenance={"sillytavern_extra": extra})
        active = m.get("swipe_id", 0)
        active = active if isinstance(active, int) and 0 <= active < len(swipes) else 0
        if len(swipes) > 1:
            store.select_swipe(mid, active)
        if swipes[active] != m["mes"]:  # `mes` wins over a stale swipe list
            store.edit_message(mid, m["mes"])
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
                "chat_metadata": {},
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
        lines.append(json.dumps(st, ensure_ascii=False))
    write_text_atomic(path, "\n".join(lines) + "\n")


def export_markdown(store: ChatStore, chat_id: int, path: Path) -> None:
    info = store.chat(chat_id)
    char = info["card_name"] or "Assistant"
    user = info["user_name"] or "User"
    out = [f"# {info['title']}", "", f"*{time.strftime('%Y-%m-%d %H:%M', time.localtime(info['created_at']))}*", ""]
    for m in store.messages(chat_id):
        speaker = m.name or {"user": user, "assistant": char}.get(m.role, "System")
        note = " *(stopped)*" if m.state == "stopped" else ""
        out += [f"**{speaker}:**{note}", "", m.text, ""]
    write_text_atomic(path, "\n".join(out))
