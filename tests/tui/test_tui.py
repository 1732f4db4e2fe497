"""The chat screen driven by Textual's Pilot on the real bundled model and real SQLite.

Each test checks what the screen shows and what the chat database holds afterwards.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.chats.store import ChatStore
from app.tui.screens.dialogs import ConfirmScreen, EditScreen, TextScreen
from app.tui.widgets.chat_input import ChatInput
from app.tui.widgets.message_view import MessageView
from tests.tui_helpers import SIZE, chat_screen, greedy, make_app, send, wait_idle, wait_until


def stored(home: Path) -> list:
    store = ChatStore(home / "data" / "chats.sqlite3")
    try:
        chat_id = int(store.get_state("last_chat") or 0)
        return store.messages(chat_id)
    finally:
        store.close()


def views(app) -> list[MessageView]:
    return [v for v in chat_screen(app).views if v.message_id is not None]


def test_the_app_loads_the_model_in_the_background_and_a_reply_streams_and_is_saved(cattery_home: Path) -> None:
    app = make_app(card_ref="none", card_explicit=True, system="Be brief.")

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            # The first frame comes before the model: the chat is there, the model line says it loads.
            assert app.model_status.state in ("loading", "ready")
            chat = chat_screen(app)
            chat.query_one(ChatInput).text = "What is the capital of France?"
            await pilot.press("enter")  # sent while loading: the reply waits for the model
            await wait_until(pilot, lambda: app.model_status.state == "ready", what="the model")
            await wait_idle(pilot, app)
            shown = views(app)
            assert [v.role for v in shown] == ["user", "assistant"]
            assert "Paris" in shown[-1].body.source
            assert chat.preview is not None and chat.preview.history > 0 and chat.tokens_per_second

    try:
        asyncio.run(run())
    finally:
        app.engine.close()
    rows = stored(cattery_home)
    assert [m.role for m in rows] == ["user", "assistant"]
    assert "Paris" in rows[1].text and rows[1].state == "done"
    prov = rows[1].swipes[0].provenance
    assert prov["seed"] is not None and prov["format"] == "gguf" and prov["model"]["quant"] == "Q4_1"
    assert prov["model"]["sha256"] and len(prov["model"]["sha256"]) == 64  # hashed after load, filled in


def test_escape_stops_a_reply_and_keeps_it_as_stopped(cattery_home: Path, engine) -> None:
    app = make_app(engine, sampler=greedy(2000, ban_eos=True), card_ref="none", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            chat = chat_screen(app)
            chat.query_one(ChatInput).text = "Tell me a very long story."
            await pilot.press("enter")
            await wait_until(pilot, lambda: chat.turn is not None, what="the turn")
            # The reply's own view (not yet a stored message, so not in views()) has some text:
            # the user's message alone would satisfy a check on the last stored view.
            await wait_until(
                pilot,
                lambda: (
                    chat.target is not None and chat.target.role == "assistant" and len(chat.target.shown_text) > 20
                ),
                what="some of the reply",
            )
            await pilot.press("escape")
            await wait_idle(pilot, app)
            assert "(stopped)" in str(views(app)[-1].query_one(".speaker").render())

    asyncio.run(run())
    last = stored(cattery_home)[-1]
    assert last.role == "assistant" and last.state == "stopped" and len(last.text) > 20


def test_regenerate_swipe_back_and_swipe_past_the_last_writes_a_new_one(cattery_home: Path, engine) -> None:
    app = make_app(engine, sampler=greedy().updated(temperature=1.0), card_ref="none", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, app, "Say something.")
            first = app.session.messages[-1].text
            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: len(app.session.messages[-1].swipes) == 2)
            await wait_idle(pilot, app)
            assert len(app.session.messages) == 2
            await pilot.press("alt+left")
            await wait_until(
                pilot,
                lambda: (
                    app.session.messages[-1].active == 0
                    and views(app)[-1].body.source == first
                    and "‹ 1/2 ›" in str(views(app)[-1].query_one(".speaker").render())
                ),
                what="the first alternative",
            )
            await pilot.press("alt+right")  # to the second
            await wait_until(pilot, lambda: app.session.messages[-1].active == 1, what="the second alternative")
            await pilot.press("alt+right")  # past the last: a third is written
            await wait_until(pilot, lambda: len(app.session.messages[-1].swipes) == 3)
            await wait_idle(pilot, app)
            assert app.session.messages[-1].active == 2

    asyncio.run(run())
    last = stored(cattery_home)[-1]
    assert len(last.swipes) == 3 and last.active == 2
    assert all(s.provenance.get("seed") is not None for s in last.swipes)


def test_the_greetings_are_the_first_messages_alternatives(cattery_home: Path, engine) -> None:
    app = make_app(engine, card_ref="bundled:mochi", card_explicit=True, new_chat=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: len(views(app)) == 1, what="the greeting")
            [greeting] = views(app)
            assert "keyboard" in greeting.body.source and "‹ 1/2 ›" in str(greeting.query_one(".speaker").render())
            await pilot.press("alt+right")
            await wait_until(pilot, lambda: "physics papers" in views(app)[0].body.source, what="the second greeting")
            await pilot.press("alt+right")  # no user message yet: nothing is generated past the last greeting
            await pilot.pause(0.5)  # (nothing to wait for: nothing may happen)
            assert chat_screen(app).busy is None and len(app.session.messages[0].swipes) == 2

    asyncio.run(run())
    assert stored(cattery_home)[0].active == 1


def test_select_edit_delete_and_delete_after(cattery_home: Path, engine) -> None:
    app = make_app(engine, card_ref="none", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, app, "One")
            await send(pilot, app, "Two")
            assert len(app.session.messages) == 4
            chat = chat_screen(app)
            chat.query_one(ChatInput).focus()
            await pilot.press("up")  # the input is empty: up selects the last message
            assert isinstance(app.focused, MessageView) and app.focused.index == 3
            await pilot.press("up", "up")
            assert app.focused.index == 1
            await pilot.press("e")
            await wait_until(pilot, lambda: isinstance(app.screen, EditScreen))
            area = app.screen.query_one("#editor")
            area.text = "An edited reply."
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: views(app)[1].body.source == "An edited reply.", what="the edit")
            assert app.session.messages[1].text == "An edited reply."
            views(app)[3].focus()
            await pilot.press("d")  # one message: no question asked
            await wait_until(pilot, lambda: len(views(app)) == 3, what="the delete")
            assert [m.text for m in app.session.messages][:3] == ["One", "An edited reply.", "Two"]
            views(app)[1].focus()
            await pilot.press("D")  # this and the one after: asked first
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_until(pilot, lambda: len(app.session.messages) == 1, what="the delete after")
            assert [m.text for m in app.session.messages] == ["One"]
            assert [v.body.source for v in views(app)] == ["One"]

    asyncio.run(run())
    assert [m.text for m in stored(cattery_home)] == ["One"]


def test_branch_copy_details_continue_and_impersonate(cattery_home: Path, engine) -> None:
    app = make_app(engine, card_ref="none", card_explicit=True, system="Be brief.")

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, app, "What is the capital of France?")
            original = app.session.chat_id
            views(app)[-1].focus()
            await pilot.press("c")
            assert app.clipboard == app.session.messages[-1].text
            await pilot.press("i")
            await wait_until(pilot, lambda: isinstance(app.screen, TextScreen))
            text = str(app.screen.query_one("#details-text Static").render())
            assert "SmolLM2" in text and "seed" in text and "tok/s" in text
            await pilot.press("escape")
            # Continue a reply cut short.
            app.session.edit(1, "The capital of France is")
            chat_screen(app).sync()
            chat_screen(app).query_one(ChatInput).focus()
            await pilot.press("ctrl+o")
            await wait_until(pilot, lambda: app.session.messages[1].text != "The capital of France is")
            await wait_idle(pilot, app)
            continued = app.session.messages[1].text
            assert continued.startswith("The capital of France is") and "Paris" in continued
            assert views(app)[-1].body.source == continued
            # Impersonate: the model writes the user's next line into the input; nothing is saved.
            await pilot.press("ctrl+g")
            await wait_until(pilot, lambda: chat_screen(app).query_one(ChatInput).text.strip() != "")
            await wait_idle(pilot, app)
            assert len(app.session.messages) == 2
            # Branch from the first message: a new chat, shown at once, the old one untouched.
            views(app)[0].focus()
            await pilot.press("b")
            await wait_until(pilot, lambda: app.session.chat_id != original, what="the branch")
            await wait_until(pilot, lambda: len(views(app)) == 1, what="the branch shown")
            assert len(app.session.messages) == 1
            assert len(views(app)) == 1

    asyncio.run(run())
    store = ChatStore(cattery_home / "data" / "chats.sqlite3")
    chats = store.list_chats()
    assert len(chats) == 2 and sorted(c.messages for c in chats) == [1, 2]
    store.close()


def test_quit_and_reopen_returns_to_the_chat_as_it_was(cattery_home: Path, engine) -> None:
    first = make_app(engine, card_ref="bundled:mochi", card_explicit=True)

    async def write() -> int:
        async with first.run_test(size=SIZE) as pilot:
            await send(pilot, first, "Hello Mochi!")
            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: len(first.session.messages[-1].swipes) == 2)
            await wait_idle(pilot, first)
            await pilot.press("alt+left")
            await wait_until(pilot, lambda: first.session.messages[-1].active == 0, what="the swipe back")
            box = chat_screen(first).query_one(ChatInput)
            box.text = "a half-written thought"
            # The draft is saved as it is typed (after a pause in typing), before quitting.
            await wait_until(pilot, lambda: first.session.draft == "a half-written thought", what="the draft")
            await pilot.press("ctrl+q")
        return first.session.chat_id

    chat_id = asyncio.run(write())
    again = make_app(engine)  # plain `cattery`: no card, no chat asked for

    async def reopen() -> None:
        async with again.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: again.session is not None and len(views(again)) == 3, what="the chat")
            await wait_until(
                pilot,
                lambda: chat_screen(again).query_one(ChatInput).text == "a half-written thought",
                what="the draft",
            )
            assert again.session.chat_id == chat_id and again.session.char_name == "Mochi"
            shown = views(again)
            assert [v.role for v in shown] == ["assistant", "user", "assistant"]
            assert "‹ 1/2 ›" in str(shown[-1].query_one(".speaker").render())
            assert chat_screen(again).query_one(ChatInput).text == "a half-written thought"

    asyncio.run(reopen())


def test_messages_out_of_the_window_are_dimmed(cattery_home: Path, engine) -> None:
    app = make_app(engine, card_ref="none", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.session is not None, what="the chat")
            s = app.session
            long = "word " * 350
            for i in range(6):  # ~2,800 tokens of history: more than the test engine's 2,048 context
                s.add_user(f"{i}: {long}")
                s.store.add_message(s.chat_id, "assistant", f"reply {i}")
                s.reload()
            chat = chat_screen(app)
            chat.sync()
            chat.refresh_preview()
            await wait_until(pilot, lambda: chat.preview is not None and chat.preview.first_kept > 0)
            first_kept = chat.preview.first_kept
            await wait_until(
                pilot,
                lambda: [v.index for v in views(app) if v.has_class("-out")] == list(range(first_kept)),
                what="the dimmed messages",
            )
            assert chat.preview.used <= engine.n_ctx

    asyncio.run(run())


def test_a_reopened_chat_starts_from_its_kv_snapshot(cattery_home: Path, engine) -> None:
    """Issue 18: quitting keeps the chat's KV cache on disk; the next start puts it back, so the
    next turn evaluates only the new message, and the snapshot goes when the chat is deleted."""
    snapshots = cattery_home / "cache" / "snapshots"

    async def first() -> None:
        app = make_app(engine, card_ref="mochi", card_explicit=True, new_chat=True)
        async with app.run_test(size=SIZE) as pilot:
            await wait_idle(pilot, app)
            await send(pilot, app, "Tell me about your favourite toy.")

    asyncio.run(first())
    [kept] = list(snapshots.iterdir())
    assert kept.name.endswith(".kv") and kept.stat().st_size > 0
    engine.reset()  # the shared test engine forgets it: only the snapshot can bring it back
    app = make_app(engine, sampler=greedy(8))

    async def second() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.restored.tokens > 0, what="the snapshot restored")
            assert app.restored.source == "disk"
            await wait_idle(pilot, app)
            before = app.restored.tokens
            await send(pilot, app, "And your second favourite?")
            stats = app.session.last_stats
            assert stats is not None and stats.prompt_reused >= before - 2 and stats.prompt_evaluated < 30

    asyncio.run(second())


def test_switching_chats_in_the_app_restores_each_from_memory_and_says_so(cattery_home: Path, engine) -> None:
    """Issue 18: leaving a chat keeps its cache in memory; coming back puts it back, the status bar
    says how much was restored, the next turn evaluates only what is new, and `i` says the reply
    started from the snapshot."""
    app = make_app(engine, card_ref="mochi", card_explicit=True, new_chat=True, sampler=greedy(8))

    def status() -> str:
        return str(chat_screen(app).query_one("#status").render())

    async def run() -> None:
        async with app.run_test(size=(140, 34)) as pilot:
            await wait_idle(pilot, app)
            await send(pilot, app, "Tell me about your favourite toy.")
            first = app.session.chat_id
            app.new_chat("mochi")
            await wait_until(pilot, lambda: app.session.chat_id != first, what="the second chat")
            await wait_idle(pilot, app)
            await send(pilot, app, "What is your favourite food?")
            second = app.session.chat_id
            assert app.open_chat(first)
            await wait_until(pilot, lambda: app.restored.tokens > 0, what="the first chat restored")
            assert app.restored.source == "memory"
            await wait_until(pilot, lambda: "restored from snapshot" in status(), what="the status bar")
            restored = app.restored.tokens
            await send(pilot, app, "And your second favourite toy?")
            stats = app.session.last_stats
            assert stats is not None and stats.prompt_reused >= restored - 2 and stats.prompt_evaluated < 40
            views(app)[-1].focus()
            await pilot.press("i")
            await wait_until(pilot, lambda: isinstance(app.screen, TextScreen), what="the reply details")
            text = str(app.screen.query_one("#details-text Static").render())
            assert "started from the chat's KV snapshot (memory)" in text
            await pilot.press("escape")
            assert app.open_chat(second)
            await wait_until(pilot, lambda: app.session.chat_id == second and app.restored.tokens > 0)
            assert app.restored.source == "memory"

    asyncio.run(run())
