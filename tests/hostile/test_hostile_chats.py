"""Hostile and broken input at the chats door (issue 13): SillyTavern chat files, the SQLite store.

Every case runs through tests.hostile.bounds (a forked child under the 5 s / 256 MB bounds) or
through the real `cattery` command. An import is all or nothing: each refused file is
checked to have left no chat behind and the chats already saved untouched.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.chats import transfer
from app.chats.dberrors import ChatsBusyError, ChatsDamagedError
from app.chats.schema import MIGRATIONS
from app.chats.store import ChatStore
from app.chats.transfer import export_markdown, export_st_chat, import_st_chat
from app.errors import CatteryError, DiskError
from tests.conftest import DEADLINE, ROOT, run_cattery
from tests.fs_limits import in_private_tmpfs, need_private_mounts, with_file_size_limit
from tests.hostile import cases_chats as cases
from tests.hostile.bounds import (
    assert_bounded,
    assert_one_line_failure,
    assert_refused,
    byte_edits,
    mutate_bytes,
    run_bounded,
)

GOOD = [
    cases.st_line(0, "Welcome.", swipes=["Welcome.", "Hello, traveller."], swipe_id=0, extra={}, gen_id=42),
    cases.st_line(1, "Where am I?", extra={}),
    cases.st_line(2, "In my glade.", swipes=["In the forest.", "In my glade."], swipe_id=1, extra={"api": "k"}),
    json.dumps({"name": "System", "is_user": False, "is_system": True, "mes": "A note."}).encode() + b"\n",
]


def _fresh_store(folder: Path) -> ChatStore:
    """A store that already holds one chat, to show a refused import leaves it alone."""
    store = ChatStore(folder / "chats.sqlite3")
    chat = store.create_chat("kept", "mochi", "Mochi")
    store.add_message(chat, "user", "saved before")
    return store


def _snapshot(store: ChatStore) -> list[tuple[Any, ...]]:
    return [(c.id, c.title, c.messages, c.last_message) for c in store.list_chats()]


def _rows(store: ChatStore) -> tuple[int, ...]:
    return tuple(store.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("messages", "swipes"))


def _import_all_or_nothing(folder: Path, path: Path) -> int:
    """Import; when refused, check in the child that nothing was stored, then re-raise."""
    store = _fresh_store(folder)
    before = _snapshot(store), _rows(store)
    try:
        return import_st_chat(store, path)
    except CatteryError:
        assert (_snapshot(store), _rows(store)) == before, "a refused import changed the chats"
        raise
    finally:
        store.close()


# -- the worst cases ---------------------------------------------------------------------

EXPECTED = {
    "chat file: 50,000 messages at the 32 MiB bound": "ok",
    "chat file: 200,000 swipes (the bound)": "ok",
    "chat file: ~500,000 empty objects in one line": "ok",
    "chat file: lone surrogate after 10,000 messages (mended)": "ok",
    "settings: 1 MiB of unknown keys": "ok",
    "settings: 20,000 model tables of bad values": "ok",
}


@pytest.mark.parametrize(("name", "case"), cases.WORST_CASES, ids=[n for n, _ in cases.WORST_CASES])
def test_worst_cases_stay_within_the_bounds(name: str, case: Any) -> None:
    out = assert_bounded(case, what=name)
    assert out.kind == EXPECTED.get(name, "refused"), f"{name}: {out}"


# -- hostile chat files: every field, every shape ------------------------------------------

BAD_LINES: list[tuple[str, bytes, str]] = [
    ("name is a list", cases.st_line(9, name=["a", "b"]), "name should be text"),
    ("name is an object", cases.st_line(9, name={"a": 1}), "name should be text"),
    ("name is 10**30", cases.st_line(9, name=10**30), "name should be text"),
    ("name is huge", cases.st_line(9, name="n" * 5000), "longer than a name"),
    ("mes missing", b'{"name": "A", "is_user": true}\n', "has no text"),
    ("mes a number", b'{"mes": 5}\n', "has no text"),
    ("mes null", b'{"mes": null}\n', "has no text"),
    ("is_user text", cases.st_line(9, is_user="yes"), "is_user should be true or false"),
    ("is_system number", cases.st_line(9, is_system=1), "is_system should be true or false"),
    ("swipes text", cases.st_line(9, swipes="abc"), "swipes should be a list"),
    ("swipe a number", cases.st_line(9, swipes=["a", 5]), "swipe 1 should be text"),
    ("swipe an object", cases.st_line(9, swipes=[{"a": 1}]), "swipe 0 should be text"),
    ("too many swipes", cases.st_line(9, swipes=["s"] * (transfer.MAX_SWIPES + 1)), "swipes, more than"),
    ("swipe_id text", cases.st_line(9, swipes=["a", "b"], swipe_id="1"), "swipe_id should be a whole number"),
    ("swipe_id a float", cases.st_line(9, swipes=["a", "b"], swipe_id=1.0), "swipe_id should be a whole number"),
    ("extra a list", cases.st_line(9, extra=[1, 2]), "extra should be an object"),
    ("a line that is a list", b"[1, 2, 3]\n", "not a JSON object"),
    ("a line that is a string", b'"mes"\n', "not a JSON object"),
    ("not JSON", b"{mes: 1}\n", "is not JSON"),
    ("truncated", cases.st_line(9)[:-10] + b"\n", "is not JSON"),
    ("NaN", b'{"mes": "a", "extra": {"x": NaN}}\n', "not a number JSON allows"),
    ("Infinity", b'{"mes": "a", "gen_id": -Infinity}\n', "not a number JSON allows"),
    ("1e999", b'{"mes": "a", "gen_id": 1e999}\n', "not finite"),
    ("5000-digit integer", b'{"mes": "a", "gen_id": ' + b"9" * 5000 + b"}\n", "is not JSON"),
    ("deep", b'{"mes": "a", "extra": ' + b"[" * 100 + b"]" * 100 + b"}\n", "nested"),
    ("not UTF-8", b'{"mes": "caf\xe9"}\n', "not UTF-8"),
    ("overlong UTF-8 NUL", b'{"mes": "\xc0\x80"}\n', "not UTF-8"),
    ("encoded surrogate", b'{"mes": "\xed\xa0\x80"}\n', "not UTF-8"),
    ("a line over 8 MiB", b'{"mes": "' + b"x" * (transfer.MAX_LINE + 10) + b'"}\n', "longer than a message"),
]


@pytest.mark.parametrize(("label", "line", "match"), BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_a_bad_line_refuses_the_whole_file(label: str, line: bytes, match: str, tmp_path: Path) -> None:
    path = cases.st_file(tmp_path, [*GOOD, line, *GOOD])  # good lines before and after it
    out = assert_refused(_import_all_or_nothing, tmp_path, path, match=match, what=label)
    assert out.detail.startswith(f"{path}: line 6"), out.detail


BAD_HEADERS: list[tuple[str, bytes, str]] = [
    ("empty file", b"", "no header line"),
    ("only blank lines", b"\n\n  \n", "no header line"),
    ("a message first", cases.st_line(0), "no header line"),
    ("header a list", b"[]\n", "no header line"),
    ("character_name a number", b'{"character_name": 7}\n', "character_name should be text"),
    ("user_name a list", b'{"user_name": ["x"]}\n', "user_name should be text"),
    ("character_name huge", json.dumps({"character_name": "c" * 2000}).encode() + b"\n", "longer than a name"),
]


@pytest.mark.parametrize(("label", "head", "match"), BAD_HEADERS, ids=[b[0] for b in BAD_HEADERS])
def test_bad_headers(label: str, head: bytes, match: str, tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_bytes(head + b"".join(GOOD) if head.strip() else head)
    assert_refused(_import_all_or_nothing, tmp_path, path, match=match, what=label)


def test_counts_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The message and line bounds, at a small scale (the real ones are in the worst cases)."""
    monkeypatch.setattr(transfer, "MAX_MESSAGES", 5)
    monkeypatch.setattr(transfer, "MAX_LINES", 12)
    monkeypatch.setattr(transfer, "MAX_ALTERNATIVES", 8)
    five = cases.st_file(tmp_path, [cases.st_line(i) for i in range(5)], "five.jsonl")
    assert run_bounded(_import_all_or_nothing, tmp_path / "a", five).kind == "ok"
    six = cases.st_file(tmp_path, [cases.st_line(i) for i in range(6)], "six.jsonl")
    assert_refused(_import_all_or_nothing, tmp_path / "b", six, match="more than 5 messages")
    blank = cases.st_file(tmp_path, [cases.st_line(0), b"\n" * 20], "blank.jsonl")
    assert_refused(_import_all_or_nothing, tmp_path / "c", blank, match="more than 12 lines")
    swipes = cases.st_file(tmp_path, [cases.st_line(i, swipes=["a", "b", "c"]) for i in range(3)], "sw.jsonl")
    assert_refused(_import_all_or_nothing, tmp_path / "d", swipes, match="more than 8 swipes")


def test_not_a_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "nowhere")
    for path, match in [
        (tmp_path, "a folder"),
        (fifo, "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),
        (tmp_path / "missing.jsonl", "no such file"),
        (link, "no such file"),
        (Path(str(tmp_path / "nul") + "\0.jsonl"), "cannot read"),
    ]:
        assert_refused(_import_all_or_nothing, tmp_path, path, match=match, what=str(path))


def test_honest_oddities_are_accepted(tmp_path: Path) -> None:
    """What real files do and must keep working: a BOM, CRLF, blank lines, nulls, unknown
    fields, duplicate keys, control characters as text, half an emoji (mended)."""
    lines = [
        b"\n",
        cases.st_line(1, "crlf").rstrip(b"\n") + b"\r\n",
        b'{"name": null, "is_user": null, "is_system": null, "swipes": null, "swipe_id": null, "mes": "nulls"}\n',
        b'{"mes": "first", "mes": "dup wins", "future_field": {"a": [1, 2.5, "x"]}}\n',
        json.dumps({"mes": "bell\x07 esc\x1b[31m red \u202e rtl \x00 nul"}).encode() + b"\n",
        b'{"mes": "half \\ud83d emoji", "swipes": ["\\udc00", "ok"], "swipe_id": 5}\n',
    ]
    path = tmp_path / "odd.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(cases.HEADER).encode() + b"\n" + b"".join(lines))
    out = run_bounded(_import_all_or_nothing, tmp_path, path, keep_value=True)
    assert out.kind == "ok", out
    store = ChatStore(tmp_path / "chats.sqlite3")
    texts = [m.text for m in store.messages(out.value)]
    assert texts == ["crlf", "nulls", "dup wins", "bell\x07 esc\x1b[31m red \u202e rtl \x00 nul", "half \ufffd emoji"]
    assert [s.text for s in store.messages(out.value)[-1].swipes] == ["half \ufffd emoji", "ok"]
    store.close()


def test_failed_import_midway_leaves_no_half_chat(tmp_path: Path) -> None:
    """The issue's case: a bad name on the last line used to leave every earlier message stored."""
    out = assert_refused(cases.bad_name_at_the_end, match="name should be text")
    assert "line 10002" in out.detail
    store = _fresh_store(tmp_path)
    path = cases.st_file(tmp_path, [*(cases.st_line(i) for i in range(500)), cases.st_line(500, name=[1])])
    with pytest.raises(CatteryError):
        import_st_chat(store, path)
    assert len(store.list_chats()) == 1
    assert store.conn.execute("SELECT COUNT(*) FROM swipes").fetchone()[0] == 1
    store.close()


def test_import_round_trips_the_issue_fixture(tmp_path: Path) -> None:
    store = ChatStore(tmp_path / "c.sqlite3")
    chat = import_st_chat(store, cases.st_file(tmp_path, GOOD))
    msgs = store.messages(chat)
    assert [(m.role, m.text, m.active, len(m.swipes)) for m in msgs] == [
        ("assistant", "Welcome.", 0, 2),
        ("user", "Where am I?", 0, 1),
        ("assistant", "In my glade.", 1, 2),
        ("system", "A note.", 0, 1),
    ]
    assert msgs[0].swipes[0].provenance["sillytavern"]["gen_id"] == 42
    assert msgs[2].swipes[1].provenance == {"sillytavern_extra": {"api": "k"}}
    store.close()


# -- export of hostile text ------------------------------------------------------------------


def test_export_of_hostile_text(tmp_path: Path) -> None:
    """Control characters are data: exported as they are (JSON escapes them). Text that another
    tool stored as invalid UTF-8 (a lone surrogate's bytes) reads and exports as U+FFFD."""
    store = ChatStore(tmp_path / "c.sqlite3")
    chat = store.create_chat("t\x1b]0;pwned\x07", None, "Evil\x1b[2J", "Anon\u202e")
    hostile = "esc \x1b[31m bell \x07 nul \x00 rtl \u202e end"
    store.add_message(chat, "assistant", hostile)
    broken = store.add_message(chat, "user", "placeholder")
    store.conn.execute(
        "UPDATE swipes SET text = CAST(X'6C6F6E6520EDA08020656E64' AS TEXT) WHERE message_id = ?", (broken,)
    )
    out = tmp_path / "out.jsonl"
    assert_bounded(export_st_chat, store, chat, out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["character_name"] == "Evil\x1b[2J"
    assert rows[1]["mes"] == hostile
    assert rows[2]["mes"].startswith("lone \ufffd") and rows[2]["mes"].endswith(" end")
    md = tmp_path / "out.md"
    assert_bounded(export_markdown, store, chat, md)
    assert "lone \ufffd" in md.read_text(encoding="utf-8")
    again = import_st_chat(store, out)
    assert store.messages(again)[0].text == hostile
    store.close()


def test_cli_export_and_list_show_controls_visibly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = cases.st_file(tmp_path, [json.dumps({"name": "E\x1b[2J", "mes": "hi \x1b]0;title\x07 there"}).encode()])
    proc = run_cattery("chats", "import", str(path), home=home)
    assert proc.returncode == 0, proc.stderr
    proc = run_cattery("chats", "list", home=home)
    assert proc.returncode == 0 and "\x1b" not in proc.stdout and "\\u001b" in proc.stdout, proc.stdout
    out = tmp_path / "exported.jsonl"
    proc = run_cattery("chats", "export", "1", "-o", str(out), home=home)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text().splitlines()[1])["mes"] == "hi \x1b]0;title\x07 there"


# -- the command line, as a user would -------------------------------------------------------


def test_cli_import_of_hostile_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    good = cases.st_file(tmp_path, GOOD, "good.jsonl")
    assert run_cattery("chats", "import", str(good), home=home).returncode == 0
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for name, body in [
        ("list-name.jsonl", [*GOOD, cases.st_line(9, name=["x"])]),
        ("deep.jsonl", [b'{"mes": "a", "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"]),
        ("nan.jsonl", [b'{"mes": "a", "x": NaN}\n']),
    ]:
        path = cases.st_file(tmp_path, body, name)
        before.append(name)
        proc = run_cattery("chats", "import", str(path), home=home)
        assert_one_line_failure(proc, match=name)
    # Nothing written anywhere but the chats database (and SQLite's own files beside it).
    after = sorted(p.name for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before and not p.startswith("chats.sqlite3")] == [], after
    listed = json.loads(run_cattery("chats", "list", "--json", home=home).stdout)
    assert [c["messages"] for c in listed] == [4]


@pytest.mark.parametrize("ref", ["abc", "-1", "1.5", "\u00b2", "\u0661", "9" * 40, ""])
def test_cli_chat_ids_from_outside(ref: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    for command in (("export", ref, "-o", str(tmp_path / "x.jsonl")), ("rm", ref)):
        assert_one_line_failure(run_cattery("chats", *command, home=home), match="no chat with that id")


def test_cli_damaged_database_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    db = home / "data" / "chats.sqlite3"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not SQLite at all, just text " * 200)
    for args in (("chats", "list"), ("chats", "import", str(cases.st_file(tmp_path, GOOD)))):
        assert_one_line_failure(run_cattery(*args, home=home), match="damaged")
    assert db.read_bytes().startswith(b"this is not SQLite")  # left as it was, for the user to rescue


# -- the database: damaged, another schema, busy, concurrent first opens ---------------------


def _real_db(path: Path, chats: int = 60) -> None:
    store = ChatStore(path)
    for i in range(chats):
        chat = store.create_chat(f"chat {i}")
        for j in range(5):
            store.add_message(chat, "user", f"message {j} " + "x" * 500)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()


def _open_and_use(path: Path) -> int:
    store = ChatStore(path)
    try:
        chats = store.list_chats()
        for c in chats:
            store.messages(c.id)
        return len(chats)
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["noise", "zeros", "half", "header only", "text", "other app", "folder"])
def test_damaged_database_is_one_line(damage: str, tmp_path: Path) -> None:
    db = tmp_path / "chats.sqlite3"
    if damage in ("half", "header only"):
        _real_db(db)
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2] if damage == "half" else data[:100])
    elif damage == "noise":
        db.write_bytes(os.urandom(64 * 1024))
    elif damage == "zeros":
        db.write_bytes(b"\0" * 8192)
    elif damage == "text":
        db.write_text("id,title\n1,hello\n")
    elif damage == "other app":  # a real SQLite file, with a schema version but none of our tables
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE notes (x)")
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
        conn.close()
    else:
        db.mkdir()
    out = run_bounded(_open_and_use, db)
    assert out.kind == "refused" and "\n" not in out.detail, out
    assert out.error_type in ("ChatsDamagedError", "DiskError"), out


def test_busy_database_is_one_line(tmp_path: Path) -> None:
    """Another process holds the write lock (the issue's ~9 s): one line after the busy timeout."""
    home = tmp_path / "home"
    db = home / "data" / "chats.sqlite3"
    ChatStore(db).close()
    (home / "config").mkdir()
    (home / "config" / "settings.toml").write_text("[chats]\nbusy_timeout = 0.3\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE'); c.execute('CREATE TABLE IF NOT EXISTS lockme (x)')\n"
            "print('locked', flush=True); time.sleep(9)\n",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        store = ChatStore(db, busy_timeout=0.3)  # opening and reading need no write lock in WAL
        assert store.list_chats() == []
        t0 = time.monotonic()
        with pytest.raises(ChatsBusyError, match="busy"):
            store.create_chat("blocked")
        assert time.monotonic() - t0 < 3
        assert not store.conn.in_transaction  # rolled back, the store still usable
        # The same through the command line, as a user starting a second Cattery would see it.
        proc = run_cattery("chats", "import", str(cases.st_file(tmp_path, GOOD)), home=home)
        assert_one_line_failure(proc, match="busy (another Cattery?)")
        proc = run_cattery("chats", "rm", "1", home=home)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    store.create_chat("after")  # the lock is gone: writes work again
    assert [c.title for c in store.list_chats()] == ["after"]
    store.close()


OPENER = """
import sys, time
from pathlib import Path
from app.chats.store import ChatStore
start = float(sys.argv[2])
while time.time() < start:
    pass
store = ChatStore(Path(sys.argv[1]))
store.create_chat(sys.argv[3])
store.close()
print("ok")
"""


@pytest.mark.parametrize("trial", range(3))
def test_concurrent_first_opens(trial: int, tmp_path: Path) -> None:
    """Six processes open a database that does not exist yet, at the same instant."""
    db = tmp_path / "chats.sqlite3"
    start = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(db), str(start), f"p{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(6)
    ]
    results = [p.communicate(timeout=DEADLINE) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in results]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert sorted(r[0] for r in conn.execute("SELECT title FROM chats")) == [f"p{i}" for i in range(6)]
    conn.close()


# -- a full disk and a read-only folder ---------------------------------------------------------


def _import_under_file_limit(folder: Path, path: Path) -> int:
    return with_file_size_limit(_import_all_or_nothing, 300_000, folder, path)


def test_full_disk_by_file_size_limit(tmp_path: Path) -> None:
    """RLIMIT_FSIZE: the database's log cannot grow past 300 kB (EFBIG, like a quota)."""
    big = cases.st_file(tmp_path, [cases.st_line(i, "y" * 2000) for i in range(400)])  # ~800 kB of text
    out = run_bounded(_import_under_file_limit, tmp_path, big)
    assert out.kind == "refused" and out.error_type == "DiskError", out
    assert str(tmp_path) in out.detail
    assert _open_and_use(tmp_path / "chats.sqlite3") == 1  # the chat saved before is there, whole
    conn = sqlite3.connect(tmp_path / "chats.sqlite3")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_full_disk_and_read_only_folder_through_the_cli(tmp_path: Path) -> None:
    """A real full filesystem (ENOSPC) and a read-only one (EROFS), through `cattery chats`."""
    need_private_mounts()
    home = tmp_path / "home"
    small = cases.st_file(tmp_path, GOOD, "small.jsonl")
    big = cases.st_file(tmp_path, [cases.st_line(i, "z" * 3000) for i in range(300)], "big.jsonl")
    r = tmp_path / "report"
    script = f"""
cattery chats import {small} > /dev/null || exit 98
leave_free 150
cattery chats import {big} 2> {r}.midway.err; echo $? > {r}.midway.rc
cattery chats list --json > {r}.midway.list
fill_up
cattery chats import {small} 2> {r}.full.err; echo $? > {r}.full.rc
cattery chats list --json 2> {r}.fulllist.err; echo $? > {r}.fulllist.rc
free_up
cattery chats list --json > {r}.freed.list
readonly_now
cattery chats import {small} 2> {r}.ro.err; echo $? > {r}.ro.rc
cattery chats rm 1 2> {r}.rm.err; echo $? > {r}.rm.rc
cattery chats list --json > {r}.ro.list
"""
    proc = in_private_tmpfs(home, script, size_kib=600, env={"CATTERY_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-2000:]

    def read(suffix: str) -> str:
        return (tmp_path / f"report.{suffix}").read_text()

    for what, says in [
        ("midway", "full"),
        ("full", "full"),
        ("fulllist", "full"),
        ("ro", "read-only"),
        ("rm", "read-only"),
    ]:
        err = read(f"{what}.err")
        assert int(read(f"{what}.rc")) == 2, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("cattery: error:") and str(home / "data") in err and says in err, err
    for listing in ("midway.list", "freed.list", "ro.list"):
        chats = json.loads(read(listing))
        assert [c["messages"] for c in chats] == [4], listing  # the first import, whole, and nothing else


# -- mutation: hypothesis on a real chat file ---------------------------------------------------

HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.lists(st.text(max_size=5), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from(["\ud800", "\x00", "\x1b[2J", "a" * 3000, "{{user}}"]),
)
FIELDS = ["name", "is_user", "is_system", "mes", "swipes", "swipe_id", "extra", "send_date", "character_name"]


def _mutated_import(folder: Path, data: bytes) -> int:
    path = folder / "mutated.jsonl"
    path.write_bytes(data)
    for p in folder.glob("chats.sqlite3*"):
        p.unlink()
    return _import_all_or_nothing(folder, path)


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(ops=byte_edits())
def test_mutated_bytes_are_accepted_or_refused(ops: list[tuple[int, int, int]], tmp_path_factory: Any) -> None:
    folder = tmp_path_factory.mktemp("mut")
    data = (cases.st_file(folder, GOOD)).read_bytes()
    out = run_bounded(_mutated_import, folder, mutate_bytes(data, ops))
    assert out.bounded, out


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    line=st.integers(0, len(GOOD)),
    field=st.sampled_from(FIELDS),
    value=HOSTILE_VALUES,
    drop=st.booleans(),
)
def test_mutated_fields_are_accepted_or_refused(
    line: int, field: str, value: Any, drop: bool, tmp_path_factory: Any
) -> None:
    folder = tmp_path_factory.mktemp("mutf")
    rows = [dict(cases.HEADER)] + [json.loads(raw) for raw in GOOD]
    if drop:
        rows[line].pop(field, None)
    else:
        rows[line][field] = value
    data = "\n".join(json.dumps(r) for r in rows).encode("utf-8", "surrogatepass")
    out = run_bounded(_mutated_import, folder, data)
    assert out.bounded, out


def test_disk_error_type_is_a_cattery_error() -> None:
    assert issubclass(DiskError, CatteryError) and issubclass(ChatsDamagedError, CatteryError)
