"""Chat titles from the first exchange, renameable, never overwritten once renamed.

The summary rules (app/chats/titles.py), the store and the session keeping an automatic
title apart from the person's, the schema upgrade that retitles date-titled chats once,
`cattery chats rename` and `chats list`, and the app's header and Chats screen.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from app.chats.schema import MIGRATIONS, TITLE_SCAN_MESSAGES
from app.chats.store import ChatStore
from app.chats.titles import MAX_TITLE, TITLE_CHARS, clean_title, summarize, title_from
from app.chats.transfer import import_st_chat
from app.errors import CatteryError
from app.session.chat import start_session
from app.session.workspace import Workspace
from app.tui.widgets.chat_input import ChatInput
from tests.conftest import run_cattery
from tests.tui_helpers import SIZE, chat_screen, make_app, send, wait_until

# -- the summary --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("Hello there!", "Hello there!"),
        ("  What is the capital of France?\nAnd of Spain?", "What is the capital of France?"),
        ("*waves* Hi Mochi, how are **you** today?", "waves Hi Mochi, how are you today?"),
        ("\n\n> quoted line\n", "quoted line"),
        ("# A heading\n\nbody", "A heading"),
        ("[the docs](https://example.com/x) say so", "the docs say so"),
        ("![a cat](cat.png)", "a cat"),
        ("<b>Bold</b> <i>move</i>", "Bold move"),
        ("```python\nprint('hi')\n```\nWhat does this print?", "What does this print?"),
        ("- first item\n- second", "first item"),
        ("{{user}} walks in", "walks in"),
        ("snake_case stays, _this_ does not", "snake_case stays, this does not"),
        ("\x1b[31mred\x1b[0m text\x1b]0;retitled\x07", "red text"),
        ("ab\u202ecd", "abcd"),
    ],
)
def test_a_title_is_the_first_line_without_markup(text: str, title: str) -> None:
    assert summarize(text) == title


def test_a_long_first_line_is_cut_on_a_word_boundary() -> None:
    text = "Tell me everything you know about the history of quantum physics and cats, please"
    title = summarize(text)
    assert title == "Tell me everything you know about the…"
    assert len(title) <= TITLE_CHARS and text.startswith(title[:-1])
    word = "Pneumonoultramicroscopicsilicovolcanoconiosis-and-more"  # one word longer than a title
    assert summarize(word) == word[: TITLE_CHARS - 1] + "…"
    text = "Hello, wonderful world of cats, and dogs, and birds!"
    assert summarize(text, limit=31) == "Hello, wonderful world of cats…"  # a word ends at the cut: kept
    assert summarize(text, limit=30) == "Hello, wonderful world of…"


@pytest.mark.parametrize("text", ["", "   \n\t\n", "***", "```\ncode only\n```", "<br><hr>", "!!! ???"])
def test_nothing_readable_is_no_title(text: str) -> None:
    assert summarize(text) is None


def test_a_huge_message_is_summarised_from_its_start() -> None:
    assert summarize("A short first line\n" + "x" * 5_000_000) == "A short first line"
    assert summarize("word " * 1_000_000) == ("word " * 8).strip() + "…"


def test_which_message_titles_a_chat() -> None:
    greeting = ("assistant", "Welcome to the glade, traveller.", False)
    assert title_from([greeting]) is None  # a card's greeting is every chat's: not a title
    assert title_from([greeting, ("user", "Where am I?", False)]) == "Where am I?"
    reply = ("assistant", "I speak again, unprompted.", True)
    assert title_from([greeting, reply]) == "I speak again, unprompted."  # no user message: the first reply
    assert title_from([greeting, reply, ("user", "Hello", False)]) == "Hello"
    assert title_from([greeting, ("user", "***", False), ("user", "Second try", False)]) == "Second try"


def test_a_title_the_person_types_is_one_bounded_line() -> None:
    assert clean_title("  My\n chat\x1b[2J  ") == "My chat[2J"
    with pytest.raises(CatteryError, match="cannot be empty"):
        clean_title(" \n\x07 ")
    with pytest.raises(CatteryError, match=f"at most {MAX_TITLE}"):
        clean_title("x" * (MAX_TITLE + 1))


# -- the store and the session ----------------------------------------------------------------------


def test_a_new_chat_is_titled_by_its_first_user_message(cattery_home: Path) -> None:
    ws = Workspace()
    s = start_session(ws, "bundled:mochi")
    assert s.title_auto and s.title[:2] == "20"  # the date, until there is an exchange
    date_title = s.title
    seen: list[str] = []
    s.on_title = lambda: seen.append(s.title)
    s.reload()  # the greeting alone does not name it
    assert s.title == date_title and seen == []
    s.add_user("*purrs* Mochi, why do cats purr when they are happy and also when they are hurt?")
    assert s.title == "purrs Mochi, why do cats purr when they…" and seen == [s.title]
    assert ws.store.chat(s.chat_id)["title"] == s.title
    # It follows that message while the title is Cattery's: an edit of it renames the chat.
    s.edit(1, "Why do cats knead?")
    assert s.title == "Why do cats knead?" and ws.store.chat(s.chat_id)["title"] == "Why do cats knead?"
    # Later messages never change it.
    s.add_user("And why do they purr?")
    assert s.title == "Why do cats knead?" and len(seen) == 2
    ws.close()


def test_a_renamed_title_is_never_replaced(cattery_home: Path) -> None:
    ws = Workspace()
    s = start_session(ws, "none")
    s.rename("  My own title ")
    assert s.title == "My own title" and not s.title_auto
    s.add_user("Hello there, this would have been the title.")
    assert s.title == "My own title" and ws.store.chat(s.chat_id)["title"] == "My own title"
    # Renamed by another process (`cattery chats rename`) while this session thinks the title is its own.
    t = start_session(ws, "none")
    assert t.title_auto
    ws.store.rename_chat(t.chat_id, "Renamed elsewhere")
    t.add_user("A first message")
    assert t.title == "Renamed elsewhere" and not t.title_auto
    assert ws.store.chat(t.chat_id)["title"] == "Renamed elsewhere"
    # The store refuses an empty title in one line, and changes nothing.
    with pytest.raises(CatteryError, match="cannot be empty"):
        ws.store.rename_chat(t.chat_id, "   ")
    assert ws.store.chat(t.chat_id)["title"] == "Renamed elsewhere"
    ws.close()


def test_a_branch_and_an_imported_chat_keep_the_titles_they_get(cattery_home: Path, tmp_path: Path) -> None:
    ws = Workspace()
    s = start_session(ws, "none")
    s.add_user("The original question")
    branch = s.branch(0)
    assert ws.store.chat(branch)["title"] == "The original question (branch)"
    assert not ws.store.chat(branch)["title_auto"]
    rows = [
        {"user_name": "Anon", "character_name": "Seraphina", "create_date": "2024-01-01@10h00m00s"},
        {"name": "Seraphina", "is_user": False, "send_date": "x", "mes": "Welcome to my glade."},
        {"name": "Anon", "is_user": True, "send_date": "x", "mes": "*looks around* Where am I?"},
    ]
    path = tmp_path / "Seraphina - 2024-1-1 @10h 00m 00s 000ms.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    imported = import_st_chat(ws.store, path)
    assert ws.store.chat(imported)["title"] == "looks around Where am I?"
    unnamed = tmp_path / "my-chat-with-bob.jsonl"
    unnamed.write_text("\n".join(json.dumps({**r, "character_name": ""} if i == 0 else r) for i, r in enumerate(rows)))
    info = ws.store.chat(import_st_chat(ws.store, unnamed))
    assert info["title"] == "my-chat-with-bob" and not info["title_auto"]  # the file's name, which someone chose
    ws.close()


# -- the schema upgrade -----------------------------------------------------------------------------


def _schema_2_database(db: Path) -> sqlite3.Connection:
    """A chat database as Cattery wrote it before titles came from the first exchange."""
    conn = sqlite3.connect(db, isolation_level=None)
    for script in MIGRATIONS[:2]:
        assert isinstance(script, str)
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 2")
    return conn


def _chat(conn: sqlite3.Connection, title: str, messages: list[tuple[str, str, str]], card: str | None = None) -> int:
    cur = conn.execute(
        "INSERT INTO chats (title, card_name, created_at, updated_at) VALUES (?, ?, 1, 1)", (title, card)
    )
    chat_id = int(cur.lastrowid or 0)
    for position, (role, text, provenance) in enumerate(messages):
        mid = conn.execute(
            "INSERT INTO messages (chat_id, position, role, created_at) VALUES (?, ?, ?, 1)", (chat_id, position, role)
        ).lastrowid
        conn.execute(
            "INSERT INTO swipes (message_id, idx, text, created_at, provenance) VALUES (?, 0, ?, 1, ?)",
            (mid, text, provenance),
        )
    return chat_id


def test_the_upgrade_retitles_date_titled_chats_once_and_leaves_chosen_titles(tmp_path: Path) -> None:
    db = tmp_path / "chats.sqlite3"
    conn = _schema_2_database(db)
    greeting = ("assistant", "Hello! I am Mochi. Nyan", "{}")
    reply = ("assistant", "Because it feels good. Nyan", '{"kind": "reply"}')
    dated = _chat(conn, "2025-11-03 21:14", [greeting, ("user", "Why do cats purr?", "{}"), reply], "Mochi")
    unanswered = _chat(conn, "2025-11-04 08:00", [greeting], "Mochi")
    spoke = _chat(conn, "2025-11-05 09:30", [greeting, ("assistant", "Mochi stretches and yawns.", '{"kind": "x"}')])
    renamed = _chat(conn, "Purring research", [greeting, ("user", "Why do cats purr?", "{}")], "Mochi")
    dateish = _chat(conn, "2025-11-03 21:14 and more", [("user", "Not a date title", "{}")])
    imported = _chat(conn, "Seraphina (imported)", [("user", "Where am I?", "{}")], "Seraphina")
    branch = _chat(conn, "2025-11-03 21:14 (branch)", [("user", "Why do cats purr?", "{}")], "Mochi")
    late = _chat(conn, "2025-11-06 10:00", [greeting] * (TITLE_SCAN_MESSAGES + 1) + [("user", "Too far", "{}")])
    conn.close()
    store = ChatStore(db)
    titles = {c.id: store.chat(c.id) for c in store.list_chats()}
    assert titles[dated]["title"] == "Why do cats purr?" and titles[dated]["title_auto"]
    assert titles[unanswered]["title"] == "2025-11-04 08:00" and titles[unanswered]["title_auto"]  # named later
    assert titles[spoke]["title"] == "Mochi stretches and yawns."
    assert titles[renamed]["title"] == "Purring research" and not titles[renamed]["title_auto"]
    assert titles[dateish]["title"] == "2025-11-03 21:14 and more" and not titles[dateish]["title_auto"]
    assert titles[imported]["title"] == "Where am I?" and titles[imported]["title_auto"]
    assert titles[branch]["title"] == "2025-11-03 21:14 (branch)" and not titles[branch]["title_auto"]
    assert titles[late]["title"] == "2025-11-06 10:00"
    # Once: a chat retitled and then renamed by the person keeps the person's title when opened again.
    store.rename_chat(dated, "2025-11-03 21:14")
    store.close()
    store = ChatStore(db)
    assert store.chat(dated)["title"] == "2025-11-03 21:14" and not store.chat(dated)["title_auto"]
    store.close()


# -- the command line -----------------------------------------------------------------------------------


def test_chats_rename_and_list_on_the_command_line(cattery_home: Path) -> None:
    ws = Workspace()
    s = start_session(ws, "bundled:mochi")
    s.add_user("Tell me about the laryngeal muscles of cats, in detail")
    chat_id = s.chat_id
    ws.close()
    listed = run_cattery("chats", "list", home=cattery_home)
    assert listed.returncode == 0 and "Tell me about the laryngeal muscles of…" in listed.stdout
    r = run_cattery("chats", "rename", str(chat_id), "Cat anatomy", home=cattery_home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"renamed chat {chat_id}: Tell me about the laryngeal muscles of… → Cat anatomy"
    out = json.loads(run_cattery("chats", "list", "--json", home=cattery_home).stdout)
    assert [c["title"] for c in out] == ["Cat anatomy"]
    for args, message in [
        (("rename", str(chat_id), "  "), "cannot be empty"),
        (("rename", "999", "x"), "999: no chat with that id"),
        (("rename", str(chat_id), "x" * 300), f"at most {MAX_TITLE}"),
    ]:
        r = run_cattery("chats", *args, home=cattery_home)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    store = ChatStore(cattery_home / "data" / "chats.sqlite3")
    assert store.chat(chat_id)["title"] == "Cat anatomy"
    store.close()


# -- the app --------------------------------------------------------------------------------------------


def test_the_app_titles_a_chat_by_its_first_message_and_keeps_a_rename(cattery_home: Path, engine) -> None:
    app = make_app(engine, card_ref="none", card_explicit=True)

    def header() -> str:
        return str(chat_screen(app).query_one("#chat-title").render())

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.session is not None and "·" in header(), what="the chat")
            assert app.session.title[:2] == "20"  # a new chat: its date
            await send(pilot, app, "Which planet is the largest in the solar system, and why?")
            title = "Which planet is the largest in the…"
            await wait_until(pilot, lambda: title in header(), what="the title in the header")
            await pilot.press("f5")
            await wait_until(pilot, lambda: app.current_mode == "chats", what="the chats screen")
            table = app.screen.query_one("#chat-table")
            await wait_until(pilot, lambda: title in str(table.get_row_at(0)[0]), what="the title in the list")
            # Renamed on the Chats screen: later messages never retitle it.
            await pilot.press("r")
            await wait_until(pilot, lambda: type(app.screen).__name__ == "AskScreen", what="the rename box")
            app.screen.query_one("Input").value = "Planets"
            await pilot.press("enter")
            await wait_until(pilot, lambda: "Planets" in str(table.get_row_at(0)[0]), what="the new title")
            await pilot.press("f2")
            await wait_until(pilot, lambda: "Planets" in header(), what="the renamed header")
            chat_screen(app).query_one(ChatInput).focus()
            await send(pilot, app, "And the smallest?")
            assert app.session.title == "Planets" and "Planets" in header()

    asyncio.run(run())
    store = ChatStore(cattery_home / "data" / "chats.sqlite3")
    [chat] = store.list_chats()
    assert chat.title == "Planets" and not store.chat(chat.id)["title_auto"]
    store.close()
