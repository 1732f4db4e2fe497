"""The full-screen app under a hostile environment and hostile input (issue 13).

The app runs for real (Pilot, the real engine on the bundled model, real SQLite). What
goes wrong is real too, never mocked:

- a busy database: a second SQLite connection holds the write lock (`BEGIN EXCLUSIVE`)
  while `[chats] busy_timeout` is 0.3 s, so each write of the app fails with SQLite's
  own SQLITE_BUSY after waiting that long;
- a read-only database: mid-chat, the chat store's connection is swapped for one that
  SQLite opened with `mode=ro` on the same file, so each write fails with SQLite's own
  SQLITE_READONLY (a real read-only remount is impossible while the app holds the file
  open for writing: the kernel refuses it with EBUSY; the chats tests remount between runs);
- files the person names that cannot be used: paths under a regular file (ENOTDIR, which
  root cannot bypass), directories, names longer than NAME_MAX;
- a settings file with values of the wrong type, an unknown theme and a [keys] table
  with unknown actions and keys no terminal sends; a chats database that is not SQLite;
- names, titles and keys holding Textual and Rich markup (`[/]`, `[@click=app.quit]`).

Each failure must be one line on screen, the app and its workers must go on, and what
was on screen (a reply, a typed message, an edit) must not be lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.tui.keys import key_table, parse_keys, read_keymap
from app.tui.plain import cell, plain
from app.tui.screens.dialogs import AskScreen, ConfirmScreen, EditScreen
from app.tui.widgets.chat_input import ChatInput
from app.tui.widgets.message_view import MessageView
from tests.hostile import cases_tui as cases
from tests.hostile.bounds import run_bounded
from tests.terminal import Terminal
from tests.tui_helpers import SIZE, answer, chat_screen, greedy, make_app, send, wait_idle, wait_until

ROOT = Path(__file__).resolve().parents[2]


# -- helpers --------------------------------------------------------------------------------


def write_settings(home: Path, text: str) -> Path:
    path = home / "config" / "settings.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def recording(app: Any) -> list[tuple[str, str]]:
    """Every notification the app shows, as (severity, message), kept past their timeouts."""
    seen: list[tuple[str, str]] = []
    original = app.notify

    def notify(message: str, **kw: Any) -> None:
        seen.append((str(kw.get("severity", "information")), message))
        original(message, **kw)

    app.notify = notify
    return seen


def errors(seen: list[tuple[str, str]], *words: str) -> list[str]:
    return [m for sev, m in seen if sev == "error" and all(w in m for w in words)]


def assert_one_line(lines: list[str]) -> None:
    for line in lines:
        assert "\n" not in line and "Traceback" not in line and len(line) < 600, line


def stored_views(app: Any) -> list[MessageView]:
    return [v for v in chat_screen(app).views if v.message_id is not None]


def shown_views(app: Any) -> list[MessageView]:
    """Every message view on screen, in the order drawn (stored, being written, not saved)."""
    box = chat_screen(app).query_one("#messages")
    return [w for w in box.children if isinstance(w, MessageView)]


async def goto(pilot: Any, app: Any, key: str, name: str) -> Any:
    await pilot.press(key)
    await wait_until(pilot, lambda: type(app.screen).__name__ == name, what=name)
    await pilot.pause(0.2)
    return app.screen


def hold_write_lock(db: Path) -> sqlite3.Connection:
    """Another process's writer, as SQLite sees it: the database's write lock, held until closed."""
    other = sqlite3.connect(db, timeout=0, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return other


def make_read_only(app: Any) -> sqlite3.Connection:
    """From now on the chat store reads and writes through a connection SQLite opened read-only."""
    store = app.ws.store
    read_only = sqlite3.connect(
        f"{store.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    with store.lock:
        writable, store.conn = store.conn, read_only
    return writable


def restore(app: Any, writable: sqlite3.Connection) -> None:
    store = app.ws.store
    with store.lock:
        read_only, store.conn = store.conn, writable
    read_only.close()


def rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT c.title, m.role, m.active_swipe, s.text FROM chats c JOIN messages m ON m.chat_id = c.id "
            "JOIN swipes s ON s.message_id = m.id ORDER BY c.id, m.position, s.idx"
        ).fetchall()
    finally:
        conn.close()


# -- settings -------------------------------------------------------------------------------

BAD_SETTINGS = """
[ui]
shown_messages = -5
theme = "no-such-theme"
images = 7

[chat]
max_tokens = "lots"

[keys]
"chat.fly" = "ctrl+f"
"chat.regenerate" = "ctrl+nope"
"[/]" = "ctrl+q"
"chat.continue" = "f10"
"""


def test_bad_settings_are_warnings_and_the_app_runs(cattery_home: Path, engine) -> None:
    write_settings(cattery_home, BAD_SETTINGS)
    app = make_app(engine, card_ref="none", card_explicit=True)
    seen = recording(app)

    async def run() -> None:
        async with app.run_test(size=SIZE, notifications=True) as pilot:  # toasts drawn, as in a terminal
            await wait_until(pilot, lambda: app.session is not None, what="the chat")
            await wait_until(pilot, lambda: len(seen) >= 5, what="the warnings")
            warnings = [m for sev, m in seen if sev == "warning"]
            assert_one_line(warnings)
            # A few at start, then where to read the rest; each names the file.
            assert len(warnings) == 5 and "F6 lists them" in warnings[-1]
            assert all("settings.toml" in w for w in warnings[:4])
            assert not errors(seen)
            # Every value fell back to its default; the good key is used, the bad ones are not.
            assert app.keymap == {"chat.continue": "f10"}
            assert app.shown_messages == 60 and app.theme == "textual-dark" and app.image_mode == "auto"
            assert app.session.sampler.max_tokens == 24  # (the test's sampler; the settings' value was refused)
            # The toasts show the lines as they are: "[keys]" and "[/]" are text, not markup.
            await wait_until(
                pilot, lambda: any("[ui]" in str(t.render()) for t in app.screen.query("Toast")), what="the toasts"
            )
            # The app works.
            await send(pilot, app, "Hello there.")
            assert [v.role for v in stored_views(app)] == ["user", "assistant"]
            # The Settings screen lists every problem, literally.
            screen = await goto(pilot, app, "f6", "SettingsScreen")
            listed = str(screen.query_one("#settings-warnings").render())
            for needle in ("[ui] shown_messages", "[ui] theme", "[ui] images", "[chat] max_tokens", "chat.fly"):
                assert needle in listed, needle
            assert "[keys] [/]" in listed and "'nope'" in listed
            assert screen.query_one("#settings-warnings").display

    asyncio.run(run())


def test_a_keys_table_of_any_shape_is_never_fatal() -> None:
    """Hostile [keys] tables, straight into the parser: only usable entries come out, each problem one line."""
    known = sorted(a.id for actions in key_table().values() for a in actions)
    table: dict[str, Any] = {
        "chat.fly": "ctrl+f",
        known[0]: "ctrl+",
        known[1]: ["f1", 7],
        known[2]: {"nested": "table"},
        known[3]: "ctrl+ctrl+x",
        known[4]: "",
        known[5]: "\x1b[31m",
        known[6]: "f" * 5000,
        "x" * 10_000: "a",
        known[7]: "alt+left, ,f9",
    }
    keymap, warnings = read_keymap(table, "/home/u/settings.toml")
    assert keymap == {known[7]: "alt+left,f9"}
    assert len(warnings) == 9
    assert_one_line(warnings)
    assert all(w.startswith("/home/u/settings.toml: [keys] ") for w in warnings)
    assert not any("\x1b" in w for w in warnings)  # a control character is shown, not sent
    # Thousands of bad entries: a bounded report.
    keymap, warnings = read_keymap({f"no.{i}": "a" for i in range(5000)}, "s.toml")
    assert keymap == {} and len(warnings) == 21 and "4,980 more" in warnings[-1]


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(sorted(a.id for v in key_table().values() for a in v)), st.text(max_size=30)),
        st.recursive(
            st.one_of(st.text(max_size=40), st.integers(), st.booleans(), st.floats(), st.none()),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
            max_leaves=8,
        ),
        max_size=12,
    )
)
def test_mutated_keys_tables_give_usable_keys_or_one_line_each(table: dict[str, Any]) -> None:
    keymap, warnings = read_keymap(table, "settings.toml")
    assert set(keymap) <= set(table)
    for keys in keymap.values():
        assert parse_keys(keys) == (keys, "")  # what is kept is what Textual can match, as it is
    assert len(keymap) + min(len(warnings), 21) >= min(len(table), 21)
    assert_one_line(warnings)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(st.text(alphabet=st.sampled_from("[]/@=$#:ab \\.,+-_ctrlalf1é"), max_size=60))
def test_mutated_key_strings_are_taken_or_refused_in_one_line(text: str) -> None:
    parsed, why = parse_keys(text)
    if parsed is None:
        assert why and "\n" not in why
    else:
        assert why == "" and parse_keys(parsed) == (parsed, "")


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.text(alphabet=st.sampled_from("[]/@=$#:abB \\click.quit-on red"), max_size=80))
def test_outside_text_in_a_widget_is_its_own_text(text: str) -> None:
    """Whatever a name holds, the widget shows exactly it: no markup, no error."""
    assert plain(text).plain == text
    assert cell(text).plain == text
    assert not plain(text).spans


def test_the_worst_cases_are_bounded() -> None:
    for name, case in cases.WORST_CASES:
        outcome = run_bounded(case, seconds=5, memory_mb=256)
        assert outcome.kind in ("ok", "refused"), f"{name}: {outcome}"


# -- the chat store failing mid-chat ---------------------------------------------------------


def test_a_reply_the_busy_database_will_not_take_stays_on_screen(cattery_home: Path, engine) -> None:
    write_settings(cattery_home, "[chats]\nbusy_timeout = 0.3\n")
    app = make_app(engine, sampler=greedy(2000, ban_eos=True), card_ref="none", card_explicit=True)
    seen = recording(app)
    db = cattery_home / "data" / "chats.sqlite3"
    lock: list[sqlite3.Connection] = []

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            chat = chat_screen(app)
            chat.query_one(ChatInput).text = "Tell me a very long story."
            await pilot.press("enter")
            await wait_until(pilot, lambda: chat.turn is not None, what="the turn")
            await wait_until(
                pilot, lambda: chat.target is not None and len(chat.target.shown_text) > 40, what="some of the reply"
            )
            lock.append(hold_write_lock(db))  # another Cattery takes the database…
            await pilot.press("escape")  # …just as the stopped reply is to be saved
            await wait_idle(pilot, app)
            [unsaved] = [v for v in shown_views(app) if v.unsaved]
            text = unsaved.unsaved_text
            assert len(text) > 40 and " ".join(unsaved.shown_text.split()) == " ".join(text.split())  # as streamed
            assert "(not saved)" in str(unsaved.query_one(".speaker").render())
            [line] = errors(seen, "could not be saved", "busy")
            assert_one_line([line])
            assert [m.role for m in app.session.messages] == ["user"]
            # It can be copied.
            unsaved.focus()
            await pilot.press("c")
            await wait_until(pilot, lambda: app.clipboard == text, what="the copy")
            # A message sent while the database is busy stays in the box, to send again.
            box = chat.query_one(ChatInput)
            box.text = "kept text"
            box.focus()
            await pilot.press("enter")
            await wait_until(pilot, lambda: len(errors(seen, "busy")) == 2, what="the refusal")
            assert box.text == "kept text" and len(app.session.messages) == 1
            # The draft could not be kept either: said once, not at every pause in typing.
            await wait_until(pilot, lambda: any("draft" in m for _, m in seen), what="the draft warning")
            box.text = "kept text, and more"
            await pilot.pause(1.5)
            assert len([m for _, m in seen if "draft" in m]) == 1
            # The other Cattery is done: the chat goes on below the reply that was not saved.
            lock.pop().close()
            app.session.sampler = greedy(16)
            box.text = "Short one."
            await pilot.press("enter")
            await wait_until(pilot, lambda: len(app.session.messages) == 3, what="the next reply")
            await wait_idle(pilot, app)
            order = [("unsaved" if v.unsaved else v.role) for v in shown_views(app)]
            assert order == ["user", "unsaved", "user", "assistant"]
            # Quitting while the database is busy again: the draft is not saved, the app ends cleanly.
            box.text = "a draft at the end"
            lock.append(hold_write_lock(db))
            await pilot.press("ctrl+q")

    try:
        asyncio.run(run())
    finally:
        for held in lock:
            held.close()
    assert app.return_code in (0, None)
    stored = [(role, text) for _, role, _, text in rows(db)]
    assert [r for r, _ in stored] == ["user", "user", "assistant"]
    assert stored[1][1] == "Short one."


def test_a_read_only_database_refuses_each_change_in_one_line_and_keeps_the_screen(cattery_home: Path, engine) -> None:
    app = make_app(engine, sampler=greedy(16), card_ref="bundled:mochi", card_explicit=True, new_chat=True)
    seen = recording(app)
    db = cattery_home / "data" / "chats.sqlite3"
    before: list[Any] = []

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, app, "Hello Mochi!")
            chat = chat_screen(app)
            first_chat = app.session.chat_id
            reply = app.session.messages[-1].text
            before.extend(rows(db))
            writable = make_read_only(app)
            n = 0

            async def refused(what: str) -> None:
                nonlocal n
                n += 1
                await wait_until(pilot, lambda: len(errors(seen, "read-only")) >= n, what=what)

            # Sending: refused, the message stays in the box.
            box = chat.query_one(ChatInput)
            box.text = "a message for later"
            box.focus()
            await pilot.press("enter")
            await refused("the send")
            assert box.text == "a message for later" and len(app.session.messages) == 3
            # Editing: refused, and the editor comes back with the edit in it.
            stored_views(app)[-1].focus()
            await pilot.press("e")
            await wait_until(pilot, lambda: isinstance(app.screen, EditScreen), what="the editor")
            app.screen.query_one("#editor").text = "My careful edit."
            await pilot.press("ctrl+s")
            await refused("the edit")
            await wait_until(
                pilot,
                lambda: (
                    isinstance(app.screen, EditScreen) and app.screen.query_one("#editor").text == "My careful edit."
                ),
                what="the editor again",
            )
            await pilot.press("escape")
            await wait_until(pilot, lambda: not isinstance(app.screen, EditScreen), what="the editor closed")
            assert stored_views(app)[-1].body.source == reply
            # Deleting, swiping the greeting, branching, a new chat: each refused, nothing changes.
            stored_views(app)[-1].focus()
            await pilot.press("d")
            await refused("the delete")
            assert len(stored_views(app)) == 3
            stored_views(app)[0].focus()
            await pilot.press("right")
            await refused("the swipe")
            assert app.session.messages[0].active == 0
            await pilot.press("b")
            await refused("the branch")
            assert app.session.chat_id == first_chat
            box.focus()
            await pilot.press("ctrl+n")
            await refused("the new chat")
            assert app.session.chat_id == first_chat
            # Regenerating: written, not saved, shown below; the reply it replaced shows its own text.
            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: any(v.unsaved for v in shown_views(app)), what="the unsaved reply")
            await wait_idle(pilot, app)
            assert errors(seen, "could not be saved", "read-only")
            assert stored_views(app)[-1].body.source == reply
            assert [("unsaved" if v.unsaved else v.role) for v in shown_views(app)][-2:] == ["assistant", "unsaved"]
            assert_one_line([m for _, m in seen])
            restore(app, writable)

    asyncio.run(run())
    assert rows(db) == before  # nothing was half-written


def test_the_chats_screen_on_a_read_only_database(cattery_home: Path, engine, tmp_path: Path) -> None:
    app = make_app(engine, sampler=greedy(8), card_ref="bundled:mochi", card_explicit=True, new_chat=True)
    seen = recording(app)
    db = cattery_home / "data" / "chats.sqlite3"
    st_file = tmp_path / "a chat.jsonl"
    st_file.write_text(
        json.dumps({"user_name": "U", "character_name": "Mochi"})
        + "\n"
        + json.dumps({"name": "U", "is_user": True, "mes": "hi"})
        + "\n",
        encoding="utf-8",
    )
    before: list[Any] = []

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, app, "Hi!")
            before.extend(rows(db))
            screen = await goto(pilot, app, "f5", "ChatsScreen")
            table = screen.query_one("#chat-table")
            table.focus()
            writable = make_read_only(app)
            # Rename: refused, and asked again with what was typed.
            await pilot.press("r")
            await answer(pilot, app, "A new title")
            await wait_until(pilot, lambda: len(errors(seen, "read-only")) == 1, what="the rename refused")
            await wait_until(
                pilot,
                lambda: isinstance(app.screen, AskScreen) and app.screen.query_one("#answer").value == "A new title",
                what="asked again",
            )
            await pilot.press("escape")
            await wait_until(pilot, lambda: app.screen is screen, what="back")
            # Delete: refused; the chat is still there.
            await pilot.press("d")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_until(pilot, lambda: len(errors(seen, "read-only")) == 2, what="the delete refused")
            assert table.row_count == 1
            # Export only reads the database: it works.
            out = tmp_path / "out.jsonl"
            await pilot.press("x")
            await answer(pilot, app, str(out))
            await wait_until(pilot, lambda: out.exists(), what="the export")
            # Import writes: refused in one line, in the worker, and the screen goes on.
            await pilot.press("ctrl+o")
            await answer(pilot, app, str(st_file))
            await wait_until(pilot, lambda: len(errors(seen, "read-only")) == 3, what="the import refused")
            assert table.row_count == 1
            assert_one_line([m for _, m in seen])
            restore(app, writable)

    asyncio.run(run())
    assert rows(db) == before


# -- paths the person types -----------------------------------------------------------------


def test_paths_that_cannot_be_used_are_one_line_each(cattery_home: Path, engine, tmp_path: Path) -> None:
    app = make_app(engine, sampler=greedy(8), card_ref="bundled:mochi", card_explicit=True, new_chat=True)
    seen = recording(app)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    too_long = str(tmp_path / ("n" * 300))
    bad_paths = [str(blocker / "out.jsonl"), str(folder), too_long + ".jsonl", str(blocker / "out.md")]

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, app, "Hi!")
            screen = await goto(pilot, app, "f5", "ChatsScreen")
            screen.query_one("#chat-table").focus()
            for i, path in enumerate(bad_paths, 1):
                await pilot.press("x")
                await answer(pilot, app, path)
                await wait_until(pilot, lambda i=i: len(errors(seen, "not exported")) == i, what=f"export {path}")
            for i, path in enumerate([str(blocker / "in.jsonl"), str(folder), too_long, str(tmp_path / "no.jsonl")], 1):
                await pilot.press("ctrl+o")
                await answer(pilot, app, path)
                await wait_until(pilot, lambda i=i: len(errors(seen)) == len(bad_paths) + i, what=f"import {path}")
            assert screen.query_one("#chat-table").row_count == 1
            # A card from a path that cannot be read.
            cards = await goto(pilot, app, "f3", "CharactersScreen")
            await wait_until(pilot, lambda: len(cards.characters) == 2, what="the cards")
            for path in (str(blocker / "card.png"), str(folder), too_long + ".png", str(tmp_path / "none.png")):
                count = len(errors(seen))
                await pilot.press("ctrl+o")
                await answer(pilot, app, path)
                await wait_until(pilot, lambda count=count: len(errors(seen)) == count + 1, what=f"card {path}")
            assert len(cards.characters) == 2
            # A folder of models that is not one.
            await goto(pilot, app, "f4", "ModelsScreen")
            for path in (too_long, str(blocker)):
                count = len(errors(seen))
                await pilot.press("ctrl+o")
                await answer(pilot, app, path)
                await wait_until(pilot, lambda count=count: len(errors(seen)) == count + 1, what=f"folder {path}")
            assert app.ws.settings.get("model", "dirs") == []

    asyncio.run(run())
    lines = errors(seen)
    assert len(lines) == 4 + 4 + 4 + 2
    assert_one_line(lines)
    assert not any(p.name.endswith((".jsonl", ".md")) for p in tmp_path.iterdir())  # nothing half-written
    assert not list(folder.iterdir()) and blocker.read_text() == "not a folder\n"


# -- names that hold markup -----------------------------------------------------------------

EVIL = "[/]Evil[@click=app.quit]Cat[b]"
MODEL = "[@click=app.quit]model[$x][bold"  # a file name cannot hold a slash


def test_names_titles_and_keys_holding_markup_are_shown_as_text(cattery_home: Path, engine) -> None:
    from app.cards.read import read_card
    from app.session.workspace import Workspace

    card_file = cattery_home.parent / "evil.json"
    data = json.loads((ROOT / "assets" / "cards" / "mochi.json").read_text(encoding="utf-8"))
    data["data"]["name"] = data["data"]["nickname"] = EVIL
    data["data"]["tags"] = ["[/bad]", "[$accent]x"]
    data["data"]["creator"] = "[link=file:///etc/passwd]me"
    data["data"]["description"] = "A cat. [/] [@click=app.quit]click me[/] [link=file:///etc/passwd]x"
    data["data"]["first_mes"] = "Hello [/b] {{user}} [$accent]"
    data["data"]["alternate_greetings"] = ["[@click=app.quit]Second[/]"]
    card_file.write_text(json.dumps(data), encoding="utf-8")
    ws = Workspace()
    entry = ws.cards.add(read_card(card_file), str(card_file))
    ws.close()
    models = cattery_home / "data" / "models"
    models.mkdir(parents=True)
    (models / f"{MODEL}.gguf").write_bytes(b"GGUF" + b"\0" * 64)  # unreadable: its error names it too
    write_settings(cattery_home, '[keys]\n"[/]" = "[/]"\n')
    app = make_app(engine, sampler=greedy(8), card_ref=f"library:{entry.slug}", card_explicit=True, new_chat=True)
    seen = recording(app)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.session is not None and stored_views(app), what="the chat")
            app.session.rename("[/bad] [@click=app.quit]title")
            app.session_serial += 1
            chat = chat_screen(app)
            await wait_until(pilot, lambda: "[/bad]" in str(chat.query_one("#chat-title").render()), what="title")
            assert EVIL in str(chat.query_one("#chat-title").render())
            assert EVIL in str(stored_views(app)[0].query_one(".speaker").render())
            await send(pilot, app, "Hi [/] there")
            cards = await goto(pilot, app, "f3", "CharactersScreen")
            await wait_until(pilot, lambda: len(cards.characters) == 3, what="the cards")
            labels = [str(w.render()) for w in cards.query("CharacterItem Label")]
            assert any(EVIL in t for t in labels) and any("[/bad], [$accent]x" in t for t in labels)
            await wait_until(pilot, lambda: cards.current is not None and cards.current.entry.name == EVIL, what="it")
            greetings = cards.query_one("#greetings")
            prompts = [str(greetings.get_option_at_index(i).prompt) for i in range(greetings.option_count)]
            assert "[/b]" in prompts[0] and "[@click=app.quit]Second[/]" in prompts[1]
            models = await goto(pilot, app, "f4", "ModelsScreen")
            await wait_until(pilot, lambda: any(r.info or r.error for r in models.rows.values()), what="models")
            table = models.query_one("#model-table")
            names = [str(table.get_row_at(i)[1]) for i in range(table.row_count)]
            assert MODEL in names
            table.move_cursor(row=names.index(MODEL))
            await wait_until(pilot, lambda: MODEL in str(models.query_one("#model-title").render()), what="model")
            assert MODEL in str(models.query_one("#model-facts").render())
            chats = await goto(pilot, app, "f5", "ChatsScreen")
            row = chats.query_one("#chat-table").get_row_at(0)
            assert "[/bad]" in str(row[0]) and EVIL in str(row[1])
            chats.query_one("#chat-table").focus()
            await pilot.press("d")  # the question names the chat
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            assert "[/bad]" in str(app.screen.query_one(".dialog-title").render())
            await pilot.press("n")
            await goto(pilot, app, "f6", "SettingsScreen")
            await pilot.press("f1")
            await wait_until(pilot, lambda: type(app.screen).__name__ == "HelpScreen", what="the help")
            await pilot.press("escape")
            await goto(pilot, app, "f8", "WorkshopScreen")
            await goto(pilot, app, "f2", "ChatScreen")
            assert app.return_code is None  # nothing quit the app

    asyncio.run(run())
    assert [m for _, m in seen if "[keys] [/]" in m]  # the hostile key: a warning, shown as text


# -- the app as a person starts it -------------------------------------------------------------


def test_a_damaged_chats_database_at_start_is_one_line(
    cattery_home: Path, engine, capsys: pytest.CaptureFixture[str]
) -> None:
    db = cattery_home / "data" / "chats.sqlite3"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database, just some bytes " * 200)
    app = make_app(engine)

    async def run() -> None:
        async with app.run_test(size=SIZE):
            for _ in range(600):  # the app ends itself
                if app.return_code is not None:
                    break
                await asyncio.sleep(0.05)

    asyncio.run(run())
    assert app.return_code == 2
    printed = capsys.readouterr().err  # what the app printed on leaving
    [line] = [line for line in printed.splitlines() if line.strip()]
    assert line.startswith("cattery: error: ") and "damaged" in line and str(db) in line  # one line, unwrapped
    assert_one_line([line])


def test_a_cattery_error_that_escapes_a_handler_is_its_own_line(
    cattery_home: Path, engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.errors import DiskError

    monkeypatch.delenv("CATTERY_DEBUG")
    app = make_app(engine, card_ref="none", card_explicit=True)

    def handler() -> None:
        raise DiskError("cannot write in /somewhere: No space left on device")

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.2)
            app.call_later(handler)
            for _ in range(600):
                if app.return_code is not None:
                    break
                await asyncio.sleep(0.05)

    asyncio.run(run())
    assert app.return_code == 2
    shown = [str(r) for r in app._exit_renderables] or capsys.readouterr().err.splitlines()  # (printed yet or not)
    assert shown == ["cattery: error: cannot write in /somewhere: No space left on device"]


def test_cattery_in_a_terminal_with_a_broken_settings_file_starts_and_says_so(cattery_home: Path) -> None:
    write_settings(cattery_home, '[keys]\n"chat.fly" = "ctrl+f"\n"chat.stop" = "ctrl+nope"\n')
    term = Terminal(["--card", "none"], cattery_home)
    try:
        term.wait_for("SmolLM2-135M-Instruct.Q4_1 · ")  # the app is up and the model loaded
        term.wait_for("chat.fly")  # the warning is drawn (the command line knows nothing of action ids)
    finally:
        term.kill()


def test_cattery_in_a_terminal_with_a_damaged_database_is_one_line(cattery_home: Path) -> None:
    db = cattery_home / "data" / "chats.sqlite3"
    db.parent.mkdir(parents=True)
    db.write_bytes(os.urandom(4096))
    term = Terminal(["--card", "none"], cattery_home)
    assert term.wait_exit() == 2  # (and every byte it wrote has been read)
    text = bytes(term.output).decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if "cattery: error:" in line]
    assert len(lines) == 1 and "damaged" in lines[0] and "Traceback" not in text


def test_cattery_on_a_read_only_filesystem_shows_the_chat_and_refuses_changes_in_one_line(cattery_home: Path) -> None:
    """For real: the data folder is a tmpfs remounted read-only (EROFS) before the app starts."""
    from tests.fs_limits import need_private_mounts

    need_private_mounts()
    data = cattery_home / "data"
    data.mkdir(parents=True)
    seed = (
        "from pathlib import Path; from app.chats.store import ChatStore; "
        f"s = ChatStore(Path({str(data / 'chats.sqlite3')!r})); c = s.create_chat('Kept chat'); "
        "s.add_message(c, 'user', 'SAVED-BEFORE'); s.set_state('last_chat', str(c)); s.close()"
    )
    script = (
        f"mount -t tmpfs -o size=4m tmpfs {str(data)!r} || exit 99\n"
        f'"$PY" -c {json.dumps(seed)} || exit 98\n'
        f"mount -o remount,ro {str(data)!r} || exit 97\n"
        'exec "$PY" -m app --card none\n'
    )
    term = Terminal([], cattery_home, command=["unshare", "--mount", "--propagation", "private", "bash", "-c", script])
    try:
        term.wait_for("SAVED-BEFORE")  # the chat is read and shown
        term.wait_for("SmolLM2-135M-Instruct.Q4_1 · ")  # and the model loaded
        term.type("A message that cannot be kept\r")
        term.wait_for("not sent")  # one line on screen…
        time.sleep(0.5)
        assert term.proc.poll() is None  # …and the app goes on
    finally:
        term.kill()
    assert b"Traceback" not in bytes(term.output)


def test_cattery_with_a_log_folder_it_cannot_write_still_starts(cattery_home: Path) -> None:
    """The logs folder is a file (ENOTDIR, which root cannot bypass): no logs this run, said once; the app runs."""
    cattery_home.mkdir(parents=True)
    (cattery_home / "logs").write_text("not a folder\n")
    term = Terminal(["--card", "none"], cattery_home)
    try:
        term.wait_for("cannot write the logs")
        term.wait_for("SmolLM2-135M-Instruct.Q4_1 · ")  # the model loads all the same
    finally:
        term.kill()
    assert (cattery_home / "logs").read_text() == "not a folder\n"
