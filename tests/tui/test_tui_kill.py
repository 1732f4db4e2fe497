"""The real `cattery` in a pseudo-terminal, killed with SIGKILL in the middle of a reply.

Every message finished (or stopped) before the kill must be in the database, and the
database must open cleanly. Nothing is mocked: the app runs as a user starts it, on
a terminal (a pty), with the bundled model.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from app.chats.store import ChatStore
from tests.terminal import Terminal, rows, wait_rows

# Every reply starts with this word and never ends by itself, so the test knows when a
# reply has text (and which words are whose) from the screen alone, however slow the machine.
GRAMMAR = """root ::= "Purring" words
words ::= " " [a-z]+ words"""


def words_after(marker: str, text: str) -> list[str]:
    """Each run of lowercase words after `marker` on one screen line, spaces made single."""
    return [" ".join(m.split()) for m in re.findall(re.escape(marker) + r"(?: +[a-z]+)+", text)]


def test_sigkill_mid_reply_loses_nothing_finished(cattery_home: Path) -> None:
    db = cattery_home / "data" / "chats.sqlite3"
    (cattery_home / "config").mkdir(parents=True)
    (cattery_home / "config" / "settings.toml").write_text(f"[sampler]\ngrammar = '''{GRAMMAR}'''\n")
    term = Terminal(["--card", "none", "--temp", "0", "-n", "1500"], cattery_home)
    try:
        term.wait_for("SmolLM2-135M-Instruct.Q4_1 · ")  # the model line: loaded
        term.type("Write a long story about a cat.\r")
        wait_rows(db, lambda r: len(r) == 1)
        term.wait_until(lambda: "Purring" in term.text(), "the first word of the reply")
        term.type("\x1b")  # Esc stops the reply: it is saved, marked as stopped
        first = wait_rows(db, lambda r: len(r) == 2)
        assert first[1][0] == "assistant" and first[1][1] == "stopped" and first[1][2].startswith("Purring")
        term.type("And another one, about a dog.\r")
        wait_rows(db, lambda r: len(r) == 3)
        drawn = len(term.output)

        def second_reply_drawn() -> bool:  # words of a reply that are not the first one's
            return any(not first[1][2].startswith(w) for w in words_after("Purring", term.text(drawn)))

        term.wait_until(second_reply_drawn, "the second reply on the screen")  # it is being written…
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
