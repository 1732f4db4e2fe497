"""World Info (issue 14): the same book from two places is one book (bug 5); a library of lorebooks;
books attached to a chat, a character or every chat, from the app (F9) and the command line; the
entries active for the next reply, with why; SillyTavern's positions at a depth and around the
Author's Note."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from app.cards.lore_library import LoreLibrary
from app.cards.lorebook import Lorebook, LoreEntry, book_from_spec, read_lorebook, unique_books
from app.cards.read import read_card
from app.chats.store import ChatStore
from app.prompt.segments import Message
from app.session.authors_note import AuthorsNote
from app.session.recipe import PromptRecipe
from app.session.workspace import Workspace
from tests.conftest import FIXTURES, run_cattery
from tests.tui_helpers import SIZE, make_app, wait_until

SERAPHINA = FIXTURES / "cards" / "Seraphina.png"
ELDORIA = FIXTURES / "worldinfo" / "Eldoria.json"
WORDS = "I wake in the forest; a beast howls near the glade and I feel the magic."


def contents() -> list[str]:
    """A piece of each entry's text that macros leave as it is (the ends: no {{user}} there)."""
    return [e.content[-80:] for e in read_lorebook(ELDORIA).entries]


# -- bug 5: the same book twice is one book ---------------------------------------------------


def test_the_cards_own_book_and_the_same_file_are_one_book(cattery_home: Path, tmp_path: Path) -> None:
    history = tmp_path / "h.json"
    history.write_text(json.dumps([{"role": "user", "content": WORDS}]))
    # The same file once more through the settings, under another name.
    copy = tmp_path / "Eldoria copy.json"
    shutil.copy(ELDORIA, copy)
    (cattery_home / "config").mkdir(parents=True)
    (cattery_home / "config" / "settings.toml").write_text(f'[chat]\nlorebooks = ["{copy}"]\n')
    args = ["prompt", "--format", "chatml", "--card", str(SERAPHINA), "--lorebook", str(ELDORIA)]
    r = run_cattery(*args, "--history", str(history), "--json", home=cattery_home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for text in contents():
        assert out["text"].count(text) == 1
    assert sorted(a["id"] for a in out["lore"]) == ["0", "1", "2", "3"]
    r = run_cattery(*args, "--history", str(history), home=cattery_home)
    assert all(r.stdout.count(text) == 1 for text in contents())


@pytest.mark.slow
def test_lore_in_the_line_chat_lists_each_entry_once(cattery_home: Path) -> None:
    r = run_cattery(
        "chat",
        "--plain",
        "--card",
        str(SERAPHINA),
        "--lorebook",
        str(ELDORIA),
        "--temp",
        "0",
        "-n",
        "2",
        input=f"{WORDS}\n/lore\n",
        home=cattery_home,
    )
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("Eldoria #")]
    assert sorted(lines) == sorted(set(lines)) and len(lines) == 4, r.stdout
    assert "Eldoria #2: key 'glade'" in lines


def test_books_are_known_by_their_content() -> None:
    card_book = book_from_spec(read_card(SERAPHINA).data["character_book"], "Seraphina")
    world = read_lorebook(ELDORIA)
    assert card_book.digest == world.digest  # other format, other name, priorities: the same book
    changed = Lorebook(
        "Eldoria+",
        [*world.entries[:3], LoreEntry("3", ["magic"], "Magic is rare."), LoreEntry("9", ["owl"], "Owls watch.")],
    )
    assert changed.digest != world.digest
    kept = unique_books([card_book, world, changed, world])
    assert [b.name for b in kept] == ["Eldoria", "Eldoria+"]
    # The second book keeps only what the first does not have: entry 3 with other text, and 9.
    assert [(e.uid, e.content) for e in kept[1].entries] == [("3", "Magic is rare."), ("9", "Owls watch.")]
    assert unique_books([world, Lorebook("empty copy", list(world.entries))]) == [world]


# -- SillyTavern's positions: at a depth, around the Author's Note -----------------------------


def test_entries_at_a_depth_and_around_the_note(tmp_path: Path) -> None:
    book = tmp_path / "positions.json"
    book.write_text(
        json.dumps(
            {
                "entries": {
                    "0": {
                        "uid": 0,
                        "key": ["owl"],
                        "content": "Owls see at night.",
                        "position": 4,
                        "depth": 1,
                        "role": 1,
                    },
                    "1": {"uid": 1, "key": ["owl"], "content": "Owl lore comes first.", "position": 2},
                    "2": {"uid": 2, "key": ["owl"], "content": "Owl lore comes last.", "position": 3},
                    "3": {"uid": 3, "key": ["owl"], "content": "Owls are birds.", "position": 0},
                }
            }
        )
    )
    history = [Message("user", "I saw an owl."), Message("assistant", "Where?"), Message("user", "Up there.")]

    def text(note: AuthorsNote | None) -> str:
        recipe = PromptRecipe("SYS", "Ann", "Bob", books=[read_lorebook(book)], note=note)
        return recipe.builder("chatml", None, None).build(history).text

    with_note = text(AuthorsNote("Be {{char}}.", depth=0))
    assert with_note == (
        "<|im_start|>system\nSYS\nOwls are birds.<|im_end|>\n"
        "<|im_start|>user\nI saw an owl.<|im_end|>\n"
        "<|im_start|>assistant\nWhere?<|im_end|>\n"
        "<|im_start|>user\nOwls see at night.<|im_end|>\n"  # at depth 1, as user
        "<|im_start|>user\nUp there.<|im_end|>\n"
        "<|im_start|>system\nOwl lore comes first.\nBe Bob.\nOwl lore comes last.<|im_end|>\n"  # the note's place
        "<|im_start|>assistant\n"
    )
    # Without a note, entries placed around it go where a note would (SillyTavern's default depth 4).
    assert "<|im_start|>system\nOwl lore comes first.\nOwl lore comes last.<|im_end|>\n<|im_start|>user\nI saw" in text(
        None
    )
    # A note that is not due this turn takes them with it (as SillyTavern does).
    off = text(AuthorsNote("Be {{char}}.", depth=0, every=3))
    assert "Owl lore" not in off and "Owls see at night." in off


# -- the library and attachments ----------------------------------------------------------------


def test_the_library_and_attachments_to_chats_characters_and_every_chat(cattery_home: Path, tmp_path: Path) -> None:
    ws = Workspace()
    try:
        lib = ws.lore_library
        book, new = lib.add(ELDORIA)
        assert new and book.name == "Eldoria" and book.entries == 4
        copy = tmp_path / "renamed.json"
        shutil.copy(ELDORIA, copy)
        again, new = lib.add(copy)
        assert not new and again.name == "Eldoria"  # the same content: the same book
        assert lib.path("eldoria") == lib.path("Eldoria") == book.path
        for hostile in ("../Eldoria", "/etc/passwd", "", ".hidden", "a/b"):
            assert lib.path(hostile) is None

        card_ref, card = ws.resolve_character(str(SERAPHINA))
        chat_id = ws.store.create_chat("t", card_ref, "Seraphina", "User")
        other = tmp_path / "owls.json"
        other.write_text(json.dumps({"entries": {"0": {"uid": 0, "key": ["owl"], "content": "Owls watch."}}}))
        ws.store.attach_lorebook("Eldoria", chat_id=chat_id)
        ws.store.attach_lorebook(str(other), card_ref=card_ref)
        ws.store.attach_lorebook("gone-book", chat_id=chat_id)  # removed since: skipped, with a warning
        ws.set_global_lorebook("Eldoria", True)
        lore = ws.chat_lore(card, card_ref=card_ref, chat_id=chat_id)
        assert [(a.book.name, a.scopes) for a in lore.books] == [
            ("Eldoria", ["card", "chat", "global"]),
            ("owls", ["character"]),
        ]
        assert len(lore.warnings) == 1 and "gone-book" in lore.warnings[0] and "this chat" in lore.warnings[0]
        recipe = ws.recipe(card, card_ref=card_ref, chat_id=chat_id)
        built = recipe.builder("chatml", None, None).build([Message("user", "an owl in the forest")])
        assert built.text.count(contents()[0]) == 1 and built.text.count("Owls watch.") == 1
        assert all(c in read_lorebook(ELDORIA).entries[i].content for i, c in enumerate(contents()))
        # A branch keeps the chat's books; deleting the chat drops its attachments.
        mid = ws.store.add_message(chat_id, "user", "hi")
        branch = ws.store.branch(chat_id, mid)
        assert ws.store.chat_lorebooks(branch) == ["Eldoria", "gone-book"]
        ws.store.delete_chat(chat_id)
        assert ws.store.chat_lorebooks(chat_id) == []
        ws.store.forget_lorebook("Eldoria")
        assert ws.store.chat_lorebooks(branch) == ["gone-book"]
    finally:
        ws.close()


def test_the_command_line_attaches_and_lists(cattery_home: Path) -> None:
    r = run_cattery("lore", "import", str(ELDORIA), home=cattery_home)
    assert r.returncode == 0 and "imported Eldoria as Eldoria (4 entries)" in r.stdout
    r = run_cattery("cards", "import", str(SERAPHINA), home=cattery_home)
    assert r.returncode == 0, r.stderr
    r = run_cattery("lore", "attach", "eldoria", "--card", "Seraphina", home=cattery_home)
    assert r.returncode == 0, r.stderr
    r = run_cattery("lore", "attach", "eldoria", "--global", home=cattery_home)
    assert r.returncode == 0, r.stderr
    r = run_cattery("lore", "list", "--json", home=cattery_home)
    assert json.loads(r.stdout)[0]["every_chat"] is True
    r = run_cattery("lore", "attach", "nothing-here", "--global", home=cattery_home)
    assert r.returncode != 0 and "no such lorebook file or library book" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cattery("lore", "rm", "Eldoria", home=cattery_home)
    assert r.returncode == 0 and "detached it from every chat" in r.stdout
    assert "Eldoria" not in (cattery_home / "config" / "settings.toml").read_text()


# -- the app: World Info (F9) ----------------------------------------------------------------------


@pytest.fixture
def seraphina_home(cattery_home: Path) -> Path:
    r = run_cattery("cards", "import", str(SERAPHINA), home=cattery_home)
    assert r.returncode == 0, r.stderr
    return cattery_home


def test_world_info_in_the_app(seraphina_home: Path, engine, tmp_path: Path) -> None:
    from textual.widgets import DataTable, Input

    from app.tui.screens.dialogs import AskScreen
    from app.tui.screens.lore import WorldInfoScreen

    owls = tmp_path / "Owls.json"
    owls.write_text(json.dumps({"entries": {"0": {"uid": 0, "key": ["greetings"], "content": "Owls greet at dusk."}}}))
    app = make_app(engine, card_ref="seraphina", card_explicit=True, new_chat=True)

    def rows(screen: WorldInfoScreen) -> list[tuple[str, ...]]:
        table = screen.query_one("#lore-books", DataTable)
        return [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]

    def active(screen: WorldInfoScreen) -> list[str]:
        table = screen.query_one("#lore-active", DataTable)
        return [f"{table.get_row_at(i)[1]} | {table.get_row_at(i)[2]}" for i in range(table.row_count)]

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.session is not None and app.session.ready, what="the chat")
            await pilot.press("f9")
            await wait_until(pilot, lambda: isinstance(app.screen, WorldInfoScreen), what="World Info")
            screen = app.screen
            await wait_until(pilot, lambda: screen.loaded, what="the books")
            # The card's own book, once; the greeting already switches on three entries, and says why.
            assert rows(screen) == [("Eldoria", "4", "", "card", "", "the card")]
            assert any("key 'forest'" in line for line in active(screen))
            assert len(active(screen)) == 3

            # Import a book from a file; attach it to this chat (Space) and to every chat (g).
            await pilot.press("ctrl+o")
            await wait_until(pilot, lambda: isinstance(app.screen, AskScreen), what="the path")
            app.screen.query_one(Input).value = str(owls)
            await pilot.press("enter")
            await wait_until(pilot, lambda: isinstance(app.screen, WorldInfoScreen), what="back")
            await wait_until(pilot, lambda: screen.loaded and len(rows(screen)) == 2, what="the import")
            assert rows(screen)[1] == ("Owls", "1", "", "", "", "library")
            assert screen.current_row().title == "Owls"  # the imported book is selected
            await pilot.press("space")
            await wait_until(pilot, lambda: screen.loaded and rows(screen)[1][2] == "✓", what="attached")
            await pilot.press("g")
            await wait_until(pilot, lambda: screen.loaded and rows(screen)[1][4] == "✓", what="everywhere")
            # The owls' key is in what the user writes next: the entry is on once it is written.
            assert not any("Owls" in line for line in active(screen))
            app.session.add_user("Greetings, owl friend")
            screen.changed()
            await wait_until(
                pilot, lambda: screen.loaded and any("#0 greetings" in a for a in active(screen)), what="x"
            )
            assert any("key 'greetings'" in line for line in active(screen))
            # The chat's next prompt has the book's entry, once.
            built = app.session.builder.build(app.session.history())
            assert built.text.count("Owls greet at dusk.") == 1
            # The card's own book cannot be attached elsewhere: one line, nothing changes.
            screen.query_one("#lore-books", DataTable).move_cursor(row=0)
            await pilot.press("c")
            await pilot.pause()
            assert rows(screen)[0][3] == "card"
            # Detach from the chat again.
            screen.query_one("#lore-books", DataTable).move_cursor(row=1)
            await pilot.press("space")
            await wait_until(pilot, lambda: screen.loaded and rows(screen)[1][2] == "", what="detached")
            await pilot.press("escape")
            await wait_until(pilot, lambda: not isinstance(app.screen, WorldInfoScreen), what="closed")

    asyncio.run(run())
    store = ChatStore(seraphina_home / "data" / "chats.sqlite3")
    try:
        chat_id = int(store.get_state("last_chat") or 0)
        assert store.chat_lorebooks(chat_id) == []
        assert store.card_lorebooks("seraphina") == []
    finally:
        store.close()
    assert '"Owls"' in (seraphina_home / "config" / "settings.toml").read_text()
    assert LoreLibrary(seraphina_home / "data" / "lorebooks").path("owls") is not None


def test_world_info_lists_the_books_while_a_reply_is_written(seraphina_home: Path, engine, tmp_path: Path) -> None:
    """The books need no model, so F9 lists them (and attaches one) at once; the next reply's
    entries, which count with the model's tokenizer, follow when the engine is free again.

    The engine's one thread is held by a job that waits on a gate, as a reply being written
    holds it: the same wait, without a race against the reply's end."""
    import threading

    from textual.widgets import DataTable

    from app.tui.screens.lore import WorldInfoScreen
    from tests.conftest import DEADLINE

    owls = tmp_path / "Owls.json"
    owls.write_text(json.dumps({"entries": {"0": {"uid": 0, "key": ["greetings"], "content": "Owls greet at dusk."}}}))
    assert run_cattery("lore", "import", str(owls), home=seraphina_home).returncode == 0
    app = make_app(engine, card_ref="seraphina", card_explicit=True, new_chat=True)

    def cells(screen: WorldInfoScreen, table: str, column: int) -> list[str]:
        t = screen.query_one(table, DataTable)
        return [str(t.get_row_at(i)[column]) for i in range(t.row_count)]

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.session is not None and app.session.ready, what="the chat")
            gate = threading.Event()
            held = engine._pool.submit(gate.wait, DEADLINE)  # the engine thread is busy from here
            try:
                await pilot.press("f9")
                await wait_until(pilot, lambda: isinstance(app.screen, WorldInfoScreen), what="World Info")
                screen = app.screen
                await wait_until(pilot, lambda: screen.books_read, what="the books")
                assert cells(screen, "#lore-books", 0) == ["Eldoria", "Owls"]
                assert cells(screen, "#lore-active", 1) == ["working out…"]
                screen.query_one("#lore-books", DataTable).move_cursor(row=1)
                await pilot.press("space")  # the owls attached to this chat while the engine is busy
                await wait_until(
                    pilot, lambda: screen.books_read and cells(screen, "#lore-books", 2) == ["", "✓"], what="attached"
                )
                assert not screen.loaded and not held.done()
            finally:
                gate.set()
            await wait_until(pilot, lambda: screen.loaded, what="the entries")
            assert any("key 'forest'" in why for why in cells(screen, "#lore-active", 2))

    asyncio.run(run())
