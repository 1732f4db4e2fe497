"""One full-screen app per data folder; the line chat and the commands work beside it.

Two apps on one data folder used to open the same chat and interleave what each sent
(user, user, assistant, assistant) with the wrong speaker shown. Now the second `cattery`
says in one line where the first one runs and exits; the lock is an flock that dies with
its process, so a killed app never blocks the next start. The line chat holds the chat it
writes into the same way, so neither the app nor a second line chat writes into it; the
commands never touch a chat the app or a line chat has open, and the app sees what they
change (a rename, an import) without a restart. Real processes on real ptys.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from app.chats.store import ChatStore
from app.errors import CatteryError
from app.instance import (
    LOCK_FILE,
    AlreadyRunningError,
    chat_in_use,
    claim_app,
    read_holder,
    refuse_if_in_use,
    running_app,
)
from tests.conftest import DEADLINE, ROOT, run_cattery
from tests.terminal import Terminal, rows, wait_rows
from tests.tui_helpers import SIZE, chat_screen, make_app, wait_until

MODEL_LINE = "SmolLM2-135M-Instruct.Q4_1 · "

# -- the lock -------------------------------------------------------------------------------------


def test_one_holder_at_a_time_and_it_says_who(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert running_app(data) is None
    first = claim_app(data)
    assert first.held
    holder = running_app(data)
    assert holder is not None and holder.pid == os.getpid() and holder.since is not None
    with pytest.raises(AlreadyRunningError) as refused:
        claim_app(data)
    line = str(refused.value)
    assert f"pid {os.getpid()}" in line and str(data) in line and "cattery chat --plain" in line and "\n" not in line
    first.release()
    assert running_app(data) is None
    with claim_app(data) as again:  # released: the next one takes it
        assert again.held
    assert running_app(data) is None


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from app.instance import claim_app
lock = claim_app(Path(sys.argv[1]))
print("held" if lock.held else "not held", flush=True)
time.sleep(600)
"""


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    """A crashed or killed app never blocks the next start: no stale lock file to clean up."""
    data = tmp_path / "data"
    child = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(data)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        holder = running_app(data)
        assert holder is not None and holder.pid == child.pid
        with pytest.raises(AlreadyRunningError, match=f"pid {child.pid}"):
            claim_app(data)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=DEADLINE)
    assert (data / LOCK_FILE).exists() and running_app(data) is None
    with claim_app(data) as lock:
        assert lock.held


def test_what_the_lock_file_says_is_read_with_care(tmp_path: Path) -> None:
    lock = tmp_path / LOCK_FILE
    for content in (b"", b"\xff\xfe garbage", b"[1, 2]", b'{"pid": "1; rm -rf /"}', b"{" * 100_000):
        lock.write_bytes(content)
        holder = read_holder(lock)
        assert (holder.pid, holder.terminal, holder.since) == (None, None, None)
        assert holder.describe() == "pid unknown"
    lock.write_bytes(json.dumps({"pid": 4242, "terminal": "\x1b]0;x\x07", "since": 1e300}).encode())
    assert read_holder(lock).describe() == "pid 4242"
    lock.write_bytes(json.dumps({"pid": 4242, "terminal": "/dev/pts/7", "since": 1.7e9}).encode())
    assert read_holder(lock).describe().startswith("pid 4242 on /dev/pts/7 since ")


def test_a_folder_that_cannot_hold_a_lock_does_not_stop_the_app(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    lock = claim_app(tmp_path / "file" / "data")  # ENOTDIR: no lock, and no error either
    assert not lock.held
    assert running_app(tmp_path / "file" / "data") is None


def test_a_command_leaves_alone_the_chat_the_app_has_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = ChatStore(data / "chats.sqlite3")
    open_chat, other = store.create_chat("open"), store.create_chat("other")
    store.set_state("last_chat", str(open_chat))
    refuse_if_in_use(data, store, open_chat, "delete")  # no app runs: nothing refused
    with claim_app(data):
        assert chat_in_use(data, store, open_chat) is not None and chat_in_use(data, store, other) is None
        with pytest.raises(CatteryError, match=f"chat {open_chat} is open in the running app .pid {os.getpid()}"):
            refuse_if_in_use(data, store, open_chat, "delete")
        refuse_if_in_use(data, store, other, "delete")
    store.close()


def test_a_message_for_a_chat_deleted_elsewhere_is_one_line(tmp_path: Path) -> None:
    store = ChatStore(tmp_path / "chats.sqlite3")
    chat = store.create_chat("gone soon")
    reply = store.add_message(chat, "assistant", "Hello")
    ChatStore(tmp_path / "chats.sqlite3").delete_chat(chat)  # another process
    with pytest.raises(CatteryError, match=f"chat {chat} no longer exists"):
        store.add_message(chat, "user", "Anyone there?")
    with pytest.raises(CatteryError, match="no longer exists"):
        store.add_swipe(reply, "Hello again")
    assert store.list_chats() == []
    store.close()


# -- the app sees what the commands change -------------------------------------------------------------


def test_the_app_shows_chats_made_and_renamed_beside_it(cattery_home: Path, engine, tmp_path: Path) -> None:
    app = make_app(engine, card_ref="none", card_explicit=True)
    db = cattery_home / "data" / "chats.sqlite3"

    def header() -> str:
        return str(chat_screen(app).query_one("#chat-title").render())

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.session is not None, what="the chat")
            mine = app.session.chat_id
            other = ChatStore(db)  # another process's connection: the command line
            other.rename_chat(mine, "Renamed by the command line")
            await wait_until(pilot, lambda: "Renamed by the command line" in header(), what="the new title")
            assert app.session.title == "Renamed by the command line" and not app.session.title_auto
            await pilot.press("f5")
            await wait_until(pilot, lambda: app.current_mode == "chats", what="the chats screen")
            table = app.screen.query_one("#chat-table")
            await wait_until(pilot, lambda: table.row_count == 1, what="the list")
            new = other.create_chat("Made beside the app")  # while the list is shown: no key pressed
            await wait_until(pilot, lambda: table.row_count == 2, what="the new chat in the list")
            assert "Made beside the app" in str(table.get_row(str(new))[0])
            other.close()

    asyncio.run(run())


# -- two processes -----------------------------------------------------------------------------------------


def error_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if "cattery: error:" in line]


def test_a_second_app_is_one_line_and_a_killed_one_blocks_nothing(cattery_home: Path) -> None:
    first = Terminal(["--card", "none"], cattery_home)
    try:
        first.wait_for(MODEL_LINE)
        second = Terminal(["--card", "none"], cattery_home)
        assert second.wait_exit() == 2
        shown = second.text()
        [line] = error_lines(shown)
        assert "Cattery is already running on this data folder" in line and f"pid {first.proc.pid}" in line
        assert "cattery chat --plain" in line and "Traceback" not in shown and MODEL_LINE not in shown
        assert first.proc.poll() is None  # the first one goes on
    finally:
        first.kill()  # SIGKILL: nothing of the app runs to let the lock go…
    third = Terminal(["--card", "none"], cattery_home)
    try:
        third.wait_for(MODEL_LINE)  # …and the next one starts all the same
    finally:
        third.kill()


@pytest.mark.slow
def test_the_line_chat_and_the_commands_work_beside_the_app(cattery_home: Path, tmp_path: Path) -> None:
    db = cattery_home / "data" / "chats.sqlite3"
    app = Terminal(["--card", "none", "--temp", "0", "-n", "12"], cattery_home)
    try:
        app.wait_for(MODEL_LINE)
        app.type("Hello from the app.\r")
        wait_rows(db, lambda r: len(r) >= 1)  # the app's chat exists: it is the last chat now
        # Meanwhile, a line chat on the same data folder: it answers, and would continue the last
        # chat with no character, which the app has open: it starts a chat of its own instead…
        line = run_cattery(
            "chat", "--plain", "--card", "none", "--temp", "0", "-n", "12", input="Hello from the line chat.\n"
        )
        assert line.returncode == 0 and line.stdout.strip(), line.stderr
        assert "already running" not in line.stderr and "open in the running app (pid" in line.stderr
        assert "this is a new chat" in line.stderr
        # …so the app's chat holds its own turns only, in order, whatever ran beside it.
        wait_rows(db, lambda r: len(r) == 4)
        listed = json.loads(run_cattery("chats", "list", "--json").stdout)
        assert len(listed) == 2
        chat_id = min(c["id"] for c in listed)  # the app's
        done = rows(db, chat_id)
        assert done[0] == ("user", "done", "Hello from the app.") and done[1][:2] == ("assistant", "done")
        assert len(done) == 2
        # Continuing the app's open chat from the command line is refused in one line.
        refused = run_cattery("chat", "--plain", "--chat", str(chat_id), input="Hi.\n")
        assert refused.returncode == 2 and f"chat {chat_id} is open in the running app" in refused.stderr
        # A command does not delete the chat the app has open (the app would write into a chat that is gone).
        rm = run_cattery("chats", "rm", str(chat_id))
        [refusal] = error_lines(rm.stderr)
        assert rm.returncode == 2 and f"chat {chat_id} is open in the running app (pid {app.proc.pid}" in refusal
        assert rows(db, chat_id) == done
        # A rename shows in the app's header; a chat imported beside it shows on its Chats screen.
        renamed = run_cattery("chats", "rename", str(chat_id), "Renamed-beside-the-app")
        assert renamed.returncode == 0, renamed.stderr
        app.wait_for("Renamed-beside-the-app")
        app.type("\x1b[15~")  # F5: the Chats screen
        app.wait_for("All chats")
        st = tmp_path / "st.jsonl"
        st.write_text(
            json.dumps({"user_name": "Anon", "character_name": "Seraphina"})
            + "\n"
            + json.dumps({"name": "Anon", "is_user": True, "mes": "Imported-while-the-app-ran", "send_date": "x"})
            + "\n"
        )
        imported = run_cattery("chats", "import", str(st))
        assert imported.returncode == 0, imported.stderr
        app.wait_for("Imported-while-the-app-ran")  # no key pressed after the import
        assert app.proc.poll() is None
    finally:
        app.kill()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM chats").fetchone()[0] == 3  # the app's, the line chat's, the imported one
    conn.close()


def test_a_line_chat_holds_the_chat_it_writes_into(cattery_home: Path, engine) -> None:
    """Issue 18: the line chat saves its turns into the chat it continues, so while it runs the app
    does not open that chat, another line chat starts a new one, and it is not deleted under it."""
    db = cattery_home / "data" / "chats.sqlite3"
    env = {**os.environ, "CATTERY_HOME": str(cattery_home)}
    first = subprocess.Popen(
        [sys.executable, "-m", "app", "chat", "--plain", "--card", "none", "--temp", "0", "-n", "8"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert first.stdin is not None
        first.stdin.write("Hello from the first line chat.\n")
        first.stdin.flush()
        wait_rows(db, lambda r: len(r) >= 2)
        [held] = [c["id"] for c in json.loads(run_cattery("chats", "list", "--json").stdout)]
        second = run_cattery("chat", "--plain", "--card", "none", "--temp", "0", "-n", "8", input="Hi.\n")
        assert second.returncode == 0, second.stderr
        assert f"chat {held} is open in a line chat (pid {first.pid}" in second.stderr
        assert "this is a new chat" in second.stderr
        refused = run_cattery("chat", "--plain", "--chat", str(held), input="Hi.\n")
        [line] = error_lines(refused.stderr)
        assert refused.returncode == 2 and f"chat {held} is open in a line chat (pid {first.pid}" in line
        rm = run_cattery("chats", "rm", str(held))
        [line] = error_lines(rm.stderr)
        assert rm.returncode == 2 and f"chat {held} is open in a line chat" in line
        assert len(rows(db, held)) == 2

        from app.session.workspace import Workspace

        ws = Workspace()
        ws.store.set_state("last_chat", str(held))  # as if the line chat had been the last one used
        ws.close()
        app = make_app(engine)

        async def run() -> None:
            async with app.run_test(size=SIZE) as pilot:
                await wait_until(pilot, lambda: app.session is not None)
                assert app.session is not None and app.session.chat_id != held  # a new chat instead
                await wait_until(
                    pilot,
                    lambda: any("starting a new chat" in n.message for n in app._notifications),
                    what="the notice at start",
                )
                assert app.open_chat(held) is False
                await wait_until(
                    pilot,
                    lambda: any(f"chat {held} is open in a line chat" in n.message for n in app._notifications),
                    what="the notice",
                )
                assert app.session.chat_id != held

        asyncio.run(run())
    finally:
        if first.stdin is not None:
            first.stdin.close()
        first.wait(timeout=DEADLINE)
    assert first.returncode == 0, first.stderr.read() if first.stderr else ""
    gone = run_cattery("chats", "rm", str(held))  # the line chat has ended: the chat is free
    assert gone.returncode == 0, gone.stderr
