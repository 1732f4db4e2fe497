"""The chat store on real SQLite: messages, swipes, branches, crash safety, SillyTavern files."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.chats.schema import MIGRATIONS
from app.chats.store import ChatStore
from app.chats.transfer import export_markdown, export_st_chat, import_st_chat
from app.errors import CatteryError
from tests.conftest import DEADLINE, ROOT


@pytest.fixture
def store(tmp_path: Path) -> ChatStore:
    s = ChatStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


def test_messages_swipes_edit_delete(store: ChatStore) -> None:
    chat = store.create_chat("With Mira", "mira", "Mira", "Anon")
    greet = store.add_message(chat, "assistant", "Hello.")
    user = store.add_message(chat, "user", "Hi!")
    reply = store.add_message(chat, "assistant", "First try.", provenance={"model": "m.gguf", "seed": 1})
    assert store.add_swipe(reply, "Second try.", provenance={"seed": 2}) == 1
    assert store.add_swipe(reply, "Cut short", state="stopped") == 2
    msgs = store.messages(chat)
    assert [m.text for m in msgs] == ["Hello.", "Hi!", "Cut short"] and msgs[2].state == "stopped"
    store.select_swipe(reply, 0)
    assert store.messages(chat)[2].text == "First try." and store.messages(chat)[2].swipes[0].provenance["seed"] == 1
    with pytest.raises(CatteryError):
        store.select_swipe(reply, 7)
    store.edit_message(user, "Hi there!")
    assert store.messages(chat)[1].text == "Hi there!"
    store.delete_message(greet)
    assert [(m.position, m.text) for m in store.messages(chat)] == [(0, "Hi there!"), (1, "First try.")]
    store.delete_message(user, and_after=True)
    assert store.messages(chat) == []
    summary = store.list_chats()
    assert summary[0].title == "With Mira" and summary[0].messages == 0


def test_branch_copies_up_to_a_message(store: ChatStore) -> None:
    chat = store.create_chat("A", "c", "C")
    ids = [store.add_message(chat, r, t) for r, t in [("user", "1"), ("assistant", "2"), ("user", "3")]]
    store.add_swipe(ids[1], "2b")
    branch = store.branch(chat, ids[1])
    assert [m.text for m in store.messages(branch)] == ["1", "2b"]
    assert len(store.messages(branch)[1].swipes) == 2
    assert len(store.messages(chat)) == 3  # the original is untouched
    assert {c.id for c in store.list_chats("c")} == {chat, branch}


def test_state_and_file_hash_cache(store: ChatStore, tmp_path: Path) -> None:
    store.set_state("last_chat", "3")
    store.set_state("last_chat", "4")
    assert store.get_state("last_chat") == "4" and store.get_state("nope", "x") == "x"
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 1000)
    import hashlib

    assert store.file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    f.write_bytes(b"GGUF" + b"\1" * 1000)
    assert store.file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_schema_versions(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    ChatStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(CatteryError, match="newer than this Cattery"):
        ChatStore(path)


WRITER = """
import sys, time
from pathlib import Path
from app.chats.store import ChatStore
store = ChatStore(Path(sys.argv[1]))
chat = store.create_chat("crash test")
i = 0
while True:
    store.add_message(chat, "user" if i % 2 == 0 else "assistant", f"message {i}")
    print(i, flush=True)
    i += 1
    time.sleep(0.002)
"""


def test_sigkill_loses_nothing_finished(tmp_path: Path) -> None:
    db = tmp_path / "chats.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    confirmed = -1
    deadline = time.monotonic() + DEADLINE
    while confirmed < 200 and time.monotonic() < deadline:
        confirmed = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    store = ChatStore(db)
    texts = [m.text for m in store.messages(1)]
    assert len(texts) >= confirmed + 1  # every message whose commit returned is there
    assert texts[: confirmed + 1] == [f"message {i}" for i in range(confirmed + 1)]
    store.close()


def st_chat(path: Path) -> Path:
    rows = [
        {
            "user_name": "Anon",
            "character_name": "Seraphina",
            "create_date": "2024-01-01@10h00m00s",
            "chat_metadata": {"note_prompt": ""},
        },
        {
            "name": "Seraphina",
            "is_user": False,
            "send_date": "January 1, 2024 10:00am",
            "mes": "Welcome.",
            "swipes": ["Welcome.", "Hello, traveller."],
            "swipe_id": 0,
            "extra": {},
            "gen_id": 42,
        },
        {"name": "Anon", "is_user": True, "send_date": "January 1, 2024 10:01am", "mes": "Where am I?", "extra": {}},
        {
            "name": "Seraphina",
            "is_user": False,
            "send_date": "January 1, 2024 10:02am",
            "mes": "In my glade.",
            "swipes": ["In the forest.", "In my glade."],
            "swipe_id": 1,
            "extra": {"api": "kobold"},
        },
        {"name": "System", "is_user": False, "is_system": True, "mes": "A note.", "extra": {}},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_sillytavern_chat_round_trip(store: ChatStore, tmp_path: Path) -> None:
    chat = import_st_chat(store, st_chat(tmp_path / "st.jsonl"), "seraphina")
    msgs = store.messages(chat)
    assert [(m.role, m.text) for m in msgs] == [
        ("assistant", "Welcome."),
        ("user", "Where am I?"),
        ("assistant", "In my glade."),
        ("system", "A note."),
    ]
    assert len(msgs[0].swipes) == 2 and msgs[2].active == 1
    out = tmp_path / "out.jsonl"
    export_st_chat(store, chat, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["character_name"] == "Seraphina" and rows[0]["user_name"] == "Anon"
    assert rows[1]["swipes"] == ["Welcome.", "Hello, traveller."] and rows[1]["gen_id"] == 42
    assert rows[3]["mes"] == "In my glade." and rows[3]["swipe_id"] == 1 and rows[3]["extra"] == {"api": "kobold"}
    assert rows[2]["is_user"] and rows[2]["send_date"] == "January 1, 2024 10:01am"
    again = import_st_chat(store, out)
    assert [(m.role, m.text, len(m.swipes)) for m in store.messages(again)] == [
        (m.role, m.text, len(m.swipes)) for m in msgs
    ]


def test_markdown_export(store: ChatStore, tmp_path: Path) -> None:
    chat = store.create_chat("Tea time", None, "Mochi", "Anon")
    store.add_message(chat, "user", "Tea?")
    store.add_message(chat, "assistant", "Yes *please*. Nyan", state="stopped")
    out = tmp_path / "chat.md"
    export_markdown(store, chat, out)
    text = out.read_text()
    assert text.startswith("# Tea time") and "**Anon:**\n\nTea?" in text
    assert "**Mochi:** *(stopped)*\n\nYes *please*. Nyan" in text


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("not json\n", "line 1 is not JSON"),
        ('{"mes": "x", "is_user": true}\n', "no header line"),
        ('{"user_name": "a"}\n{"name": "b"}\n', "has no text"),
    ],
)
def test_bad_sillytavern_files(content: str, fragment: str, store: ChatStore, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(CatteryError, match=fragment):
        import_st_chat(store, path)
    assert store.list_chats() == []
