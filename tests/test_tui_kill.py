"""The real `cattery` in a pseudo-terminal, killed with SIGKILL in the middle of a reply.

Every message finished (or stopped) before the kill must be in the database, and the
database must open cleanly. Nothing is mocked: the app runs as a user starts it, on
a terminal (a pty), with the bundled model.
"""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from app.chats.store import ChatStore
from tests.conftest import ROOT


class Terminal:
    """A pty with the app on its other side; everything the app draws is read and kept."""

    def __init__(
        self, args: list[str], home: Path, size: tuple[int, int] = (110, 32), *, command: list[str] | None = None
    ) -> None:
        """`cattery ARGS` on the pty; or `command`, which starts it some other way (`$PY` is its Python)."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
        env = {**os.environ, "CATTERY_HOME": str(home), "TERM": "xterm-256color", "COLUMNS": str(size[0])}
        env.pop("TEXTUAL", None)
        env["PY"] = sys.executable
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "app", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.output += data

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait_for(self, needle: str, timeout: float = 90) -> None:
        start = time.monotonic()
        while needle.encode() not in self.output:
            assert self.proc.poll() is None, f"the app exited: {bytes(self.output[-2000:])!r}"
            assert time.monotonic() - start < timeout, f"{needle!r} never appeared on the screen"
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        os.close(self.master)


def rows(db: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT m.role, s.state, s.text FROM messages m JOIN swipes s ON s.message_id = m.id "
            "AND s.idx = m.active_swipe ORDER BY m.chat_id, m.position"
        ).fetchall()
    finally:
        conn.close()


def wait_rows(db: Path, condition, timeout: float = 90) -> list[tuple[str, str, str]]:
    start = time.monotonic()
    while True:
        found = rows(db) if db.exists() else []
        if condition(found):
            return found
        assert time.monotonic() - start < timeout, f"the database never got there: {found}"
        time.sleep(0.05)


def test_sigkill_mid_reply_loses_nothing_finished(cattery_home: Path) -> None:
    db = cattery_home / "data" / "chats.sqlite3"
    term = Terminal(["--card", "none", "--temp", "0", "--ban-eos", "-n", "1500"], cattery_home)
    try:
        term.wait_for("SmolLM2-135M-Instruct.Q4_1 · ")  # the model line: loaded
        term.type("Write a long story about a cat.\r")
        wait_rows(db, lambda r: len(r) == 1)
        time.sleep(1.5)
        term.type("\x1b")  # Esc stops the reply: it is saved, marked as stopped
        first = wait_rows(db, lambda r: len(r) == 2)
        assert first[1][0] == "assistant" and first[1][1] == "stopped" and first[1][2]
        term.type("And another one, about a dog.\r")
        wait_rows(db, lambda r: len(r) == 3)
        drawn = len(term.output)
        time.sleep(1.0)  # the second reply is being written and drawn…
        assert len(term.output) > drawn
    finally:
        term.kill()  # …when the process is killed
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    after = rows(db)
    assert after[:2] == first and after[2][:2] == ("user", "done") and after[2][2].startswith("And another")
    assert len(after) == 3  # the reply cut by the kill was never finished, so never saved
    store = ChatStore(db)  # and Cattery opens it again as it was
    assert len(store.list_chats()) == 1
    store.close()
