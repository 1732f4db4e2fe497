"""Issue 14, the chat screen: nothing typed is lost, the newest message is on screen, a message
too long for the context is refused before it is sent, the current turn's numbers, deleting one
alternative, the character speaking again, and the chat at 40×12 and 60×16.

Each test drives the real app (Pilot) on the bundled model and real SQLite, as a person would.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from textual import events

from app.chats.store import ChatStore
from app.tui.screens.dialogs import AskScreen, ConfirmScreen
from app.tui.widgets.chat_input import ChatInput
from app.tui.widgets.message_view import MessageView
from tests.conftest import FIXTURES
from tests.tui_helpers import SIZE, answer, chat_screen, greedy, make_app, send, wait_idle, wait_until


def views(app: Any) -> list[MessageView]:
    return [v for v in chat_screen(app).views if v.message_id is not None]


def box(app: Any) -> ChatInput:
    return chat_screen(app).query_one(ChatInput)


def notified(app: Any, *words: str, severity: str | None = None) -> list[str]:
    """The notifications shown so far that hold every word."""
    return [
        n.message
        for n in list(app._notifications)
        if all(w in n.message for w in words) and (severity is None or n.severity == severity)
    ]


async def goto(pilot: Any, app: Any, key: str, mode: str) -> Any:
    await pilot.press(key)
    await wait_until(pilot, lambda: app.current_mode == mode and app.screen.is_current, what=f"the {mode} screen")
    await pilot.pause(0.1)
    return app.screen


async def type_and_send(pilot: Any, app: Any, text: str) -> None:
    """Type as a person does (key by key, nothing focused by the test) and press Enter: it is sent."""
    before = len(app.session.messages)
    await pilot.press(*text)
    assert box(app).text == text, f"typed text went elsewhere (focus: {app.focused!r})"
    await pilot.press("enter")
    await wait_until(
        pilot,
        lambda: len(app.session.messages) > before and app.session.messages[before].text == text,
        what="the message sent",
    )
    await wait_idle(pilot, app)


async def select_last_message(pilot: Any, app: Any) -> None:
    """↑ in the empty box selects the last message, as a person does to read or act on it."""
    box(app).focus()
    await pilot.pause(0.05)
    await pilot.press("up")
    await wait_until(pilot, lambda: isinstance(app.focused, MessageView), what="a message selected")


def blur_here(app: Any) -> None:
    """The terminal window loses the focus (the person goes to a file manager for a path)."""
    app.post_message(events.AppBlur())


def focus_back(app: Any) -> None:
    app.post_message(events.AppFocus())


# -- bug 1: typed text and Enter silently lost ---------------------------------------------


def test_typing_goes_to_the_box_after_importing_a_card_and_starting_a_new_chat(cattery_home: Path, engine) -> None:
    """F3 → Ctrl+O import a card PNG → Ctrl+N → type + Enter."""
    app = make_app(engine, sampler=greedy(4), card_ref="bundled:mochi", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: len(views(app)) == 1, what="the greeting")
            await select_last_message(pilot, app)  # left with a message selected
            blur_here(app)  # and the window left for a file manager
            await pilot.pause(0.1)
            screen = await goto(pilot, app, "f3", "characters")
            await pilot.press("ctrl+o")
            await wait_until(pilot, lambda: isinstance(app.screen, AskScreen), what="the dialog")
            focus_back(app)  # back from the file manager with the card's path
            await answer(pilot, app, str(FIXTURES / "cards" / "Seraphina.png"))
            await wait_until(
                pilot, lambda: screen.current is not None and screen.current.entry.name == "Seraphina", what="import"
            )
            await pilot.press("ctrl+n")
            await wait_until(
                pilot, lambda: app.current_mode == "chat" and app.session.char_name == "Seraphina", what="the chat"
            )
            await type_and_send(pilot, app, "hello there")

    asyncio.run(run())


def test_typing_goes_to_the_box_after_resuming_a_chat_from_the_chats_screen(cattery_home: Path, engine) -> None:
    """F5 → a → pick a chat → Enter → type."""
    app = make_app(engine, sampler=greedy(4), card_ref="bundled:mochi", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: len(views(app)) == 1, what="the greeting")
            first = app.session.chat_id
            app.new_chat("bundled:narrator")
            await wait_until(pilot, lambda: app.session.chat_id != first and len(views(app)) == 1, what="a new chat")
            await select_last_message(pilot, app)
            screen = await goto(pilot, app, "f5", "chats")
            await pilot.press("a")
            table = screen.query_one("#chat-table")
            await wait_until(pilot, lambda: table.row_count == 2, what="every chat")
            table.move_cursor(row=table.get_row_index(str(first)))
            await pilot.press("enter")
            await wait_until(
                pilot, lambda: app.current_mode == "chat" and app.session.chat_id == first, what="the chat resumed"
            )
            await type_and_send(pilot, app, "back again")
            # The same with the window's focus lost on the chat and found again on another screen.
            blur_here(app)
            await pilot.pause(0.1)
            screen = await goto(pilot, app, "f5", "chats")
            focus_back(app)
            await pilot.pause(0.1)
            await goto(pilot, app, "f2", "chat")
            await type_and_send(pilot, app, "and again")

    asyncio.run(run())


def test_typing_goes_to_the_box_after_adding_a_folder_and_loading_a_model(cattery_home: Path, model_path: Path) -> None:
    """F4 → Ctrl+O add a folder → pick a model → Ctrl+L → F2 → type."""
    folder = cattery_home.parent / "my-models"
    folder.mkdir(parents=True)
    shutil.copyfile(model_path, folder / "kitten.gguf")
    app = make_app(sampler=greedy(4), card_ref="bundled:mochi", card_explicit=True)  # its own engine: it reloads

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.model_status.state == "ready", what="the first model")
            await wait_until(pilot, lambda: len(views(app)) == 1, what="the greeting")
            await select_last_message(pilot, app)
            blur_here(app)
            await pilot.pause(0.1)
            screen = await goto(pilot, app, "f4", "models")
            focus_back(app)
            await pilot.press("ctrl+o")
            await answer(pilot, app, str(folder))
            await wait_until(pilot, lambda: any(r.entry.name == "kitten" for r in screen.rows.values()), what="it")
            row = next(r for r in screen.rows.values() if r.entry.name == "kitten")
            table = screen.query_one("#model-table")
            table.focus()
            table.move_cursor(row=table.get_row_index(str(row.entry.path)))
            await wait_until(pilot, lambda: screen.current is row, what="the row")
            await pilot.press("ctrl+l")
            await wait_until(
                pilot,
                lambda: app.model_status.state == "ready" and app.model_status.path.name == "kitten.gguf",
                what="the model",
            )
            await goto(pilot, app, "f2", "chat")
            await type_and_send(pilot, app, "new model")

    try:
        asyncio.run(run())
    finally:
        app.engine.close()


def test_typing_goes_to_the_box_after_a_dialog_and_when_the_messages_are_rebuilt(cattery_home: Path, engine) -> None:
    """A message deleted through its dialog, the chat redrawn by saved settings: the box has the keys."""
    app = make_app(engine, sampler=greedy(4), card_ref="none", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.session is not None, what="the chat")
            await type_and_send(pilot, app, "one")
            await type_and_send(pilot, app, "two")
            await select_last_message(pilot, app)
            await pilot.press("up")  # "two"
            await pilot.press("D")  # this and everything after: asked first
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            await pilot.press("y")
            await wait_until(pilot, lambda: len(app.session.messages) == 2, what="the delete")
            await type_and_send(pilot, app, "three")
            # Settings saved redraw the chat (names, avatars): a selected message goes with it.
            await select_last_message(pilot, app)
            app.apply_settings()
            await wait_until(pilot, lambda: len(views(app)) == len(app.session.messages), what="the redraw")
            await type_and_send(pilot, app, "four")

    asyncio.run(run())


# -- bug 2: a reopened chat hides its last message ---------------------------------------------


def long_chat(store: ChatStore, chat_id: int, exchanges: int = 4) -> None:
    """Long messages after the greeting: 9 messages with Mochi's, each several lines tall."""
    for i in range(exchanges):
        store.add_message(chat_id, "user", f"Question {i}: " + "tell me more about the stars and about cats. " * 12)
        store.add_message(
            chat_id, "assistant", f"Answer {i}: " + "Cats are curious and the stars are very far away, nyan. " * 15
        )
    store.add_message(chat_id, "user", "The last question.")
    store.add_message(chat_id, "assistant", "THE LAST REPLY " + "is here and it is long. " * 20)


def last_on_screen(app: Any) -> bool:
    """The last message's whole region lies inside the visible part of the message list."""
    shown = views(app)
    if not shown or shown[-1].message_id != app.session.messages[-1].id:
        return False
    scroll = chat_screen(app).query_one("#messages")
    last = shown[-1].region
    visible = scroll.content_region
    return last.height > 0 and visible.contains_region(last)


async def settle_on(pilot: Any, condition: Any, what: str) -> None:
    """Until `condition` holds, and still holds after a few more frames (late layouts undo it)."""
    await wait_until(pilot, condition, what=what)
    for _ in range(10):
        await pilot.pause(0.05)
    assert condition(), f"{what}: no longer true after a few frames"


def test_a_reopened_chat_shows_its_last_message(cattery_home: Path, engine) -> None:
    app = make_app(engine, card_ref="bundled:mochi", card_explicit=True)

    async def run() -> int:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: len(views(app)) == 1, what="the greeting")
            first = app.session.chat_id
            long_chat(app.ws.store, first)
            app.new_chat("bundled:mochi")
            await wait_until(pilot, lambda: app.session.chat_id != first, what="a new chat")
            screen = await goto(pilot, app, "f5", "chats")
            await pilot.press("a")
            table = screen.query_one("#chat-table")
            await wait_until(pilot, lambda: table.row_count == 2, what="every chat")
            table.move_cursor(row=table.get_row_index(str(first)))
            await pilot.press("enter")
            await wait_until(pilot, lambda: app.session.chat_id == first, what="the chat")
            await settle_on(pilot, lambda: last_on_screen(app), "the last message on screen")
            assert len(views(app)) == 11
        return first

    chat_id = asyncio.run(run())
    again = make_app(engine)  # a restart: the last chat reopens

    async def reopen() -> None:
        async with again.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: again.session is not None and again.session.chat_id == chat_id)
            await settle_on(pilot, lambda: last_on_screen(again), "the last message on screen after a restart")

    asyncio.run(reopen())


# -- bug 4: a paste longer than the context ---------------------------------------------------


def status_text(app: Any) -> str:
    return str(chat_screen(app).query_one("#status").render())


def test_a_paste_too_long_for_the_context_is_refused_before_sending_and_stays_in_the_box(
    cattery_home: Path, engine
) -> None:
    app = make_app(engine, sampler=greedy(4), card_ref="bundled:mochi", card_explicit=True)
    paste = "Here is a long text to read. " * 690  # 20,010 characters, ~5,000 tokens: the context is 2,048

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            chat = chat_screen(app)
            await wait_until(pilot, lambda: chat.preview is not None, what="the context meter")
            app.post_message(events.Paste(paste))  # as a terminal delivers a paste
            # Before anything is sent, the status bar says it cannot fit, beside the meter.
            await wait_until(pilot, lambda: "room for" in status_text(app), what="the count")
            shown = status_text(app)
            assert "ctx" in shown and "/2048" in shown and "room for" in shown and "Models screen, F4" in shown
            await pilot.press("enter")
            await wait_until(pilot, lambda: notified(app, "Not sent"), what="the notice")
            await pilot.pause(0.3)
            assert box(app).text == paste  # kept, to shorten
            assert len(app.session.messages) == 1 and chat.busy is None  # only the greeting
            [line] = notified(app, "Not sent")
            assert "Models screen, F4" in line and "--ctx" not in line and "\n" not in line
            assert not notified(app, "--ctx") and not notified(app, "does not fit")
            assert chat.preview is not None and "ctx" in status_text(app)  # the meter stays
            # Ctrl+A selects all of it (the text box's own F7 opens the Hub), Backspace clears it.
            await pilot.press("ctrl+a", "backspace")
            await wait_until(pilot, lambda: box(app).text == "", what="the box cleared")
            assert app.focused is box(app)
            # Shortened, it goes.
            box(app).text = "A short question now."
            await wait_until(pilot, lambda: "your message (" in status_text(app), what="the new count")
            await pilot.press("enter")
            await wait_until(pilot, lambda: len(app.session.messages) == 3, what="the reply")
            await wait_idle(pilot, app)
            # A chat that holds such a message already (imported, or edited so): the meter stays and
            # says so, and asking for a reply names the app's own control, once.
            app.session.add_user(paste)
            chat.sync()
            chat.refresh_preview()
            await wait_until(pilot, lambda: chat.preview is not None and chat.preview.problem, what="the problem")
            assert "ctx" in status_text(app) and "longer than the context" in status_text(app)
            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: notified(app, "does not fit"), what="the error")
            await wait_idle(pilot, app)
            [line] = notified(app, "does not fit")
            assert "Models screen, F4" in line and "--ctx" not in line

    asyncio.run(run())
    store = ChatStore(cattery_home / "data" / "chats.sqlite3")
    try:
        texts = [m.text for m in store.messages(int(store.get_state("last_chat") or 0))]
    finally:
        store.close()
    assert texts.count(paste) == 1 and texts[1] == "A short question now."  # the refused one never saved


def test_a_long_message_sent_while_the_model_loads_comes_back_to_the_box(cattery_home: Path) -> None:
    app = make_app(sampler=greedy(4), card_ref="none", card_explicit=True, load_overrides={"ctx": 256})
    paste = "Words to read, many of them. " * 200

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            assert app.model_status.state == "loading"  # the first frame comes before the model
            box(app).text = paste
            await pilot.press("enter")  # sent while loading: counted when the model is there
            await wait_until(pilot, lambda: app.model_status.state == "ready", what="the model")
            await wait_until(pilot, lambda: notified(app, "Not sent"), what="the notice")
            await wait_idle(pilot, app)
            assert box(app).text == paste.strip() and app.session.messages == []  # as sent: trimmed

    try:
        asyncio.run(run())
    finally:
        app.engine.close()


# -- 14: the chat screen's own numbers and words ---------------------------------------------


def long_reply(app: Any) -> None:
    """The next turns write until stopped."""
    app.session.sampler = greedy(2000, ban_eos=True)


def test_the_status_bar_shows_the_turn_being_written(cattery_home: Path, engine) -> None:
    app = make_app(engine, sampler=greedy(6), card_ref="none", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.session is not None, what="the chat")
            await send(pilot, app, "Name a colour.")
            chat = chat_screen(app)
            await wait_until(pilot, lambda: chat.preview is not None, what="the meter")
            before = chat.preview
            assert f"{before.used}/2048" in status_text(app) and "tok/s" in status_text(app)
            long_reply(app)
            box(app).text = "Now tell me a long story about the sea, with many sailors and ships. " * 3
            await pilot.press("enter")
            await wait_until(pilot, lambda: chat.turn is not None, what="the turn")
            built = chat.turn.built
            # The numbers of the prompt being answered: the new message counted, not the last turn's.
            await wait_until(pilot, lambda: f"{len(built.tokens)}/2048" in status_text(app), what="this turn")
            shown = status_text(app)
            assert len(built.tokens) > before.used + 20
            assert "this turn" in shown and "tok/s" not in shown and "next turn" not in shown
            await pilot.press("escape")
            await wait_idle(pilot, app)
            assert "next turn" in status_text(app) and "tok/s" in status_text(app)

    asyncio.run(run())


def test_a_third_alternative_being_written_shows_three_of_three(cattery_home: Path, engine) -> None:
    app = make_app(engine, sampler=greedy(4), card_ref="none", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.session is not None, what="the chat")
            await send(pilot, app, "Say something.")
            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: len(app.session.messages[-1].swipes) == 2, what="the second")
            await wait_idle(pilot, app)
            long_reply(app)
            await pilot.press("ctrl+r")
            header = lambda: str(views(app)[-1].query_one(".speaker").render())  # noqa: E731
            await wait_until(pilot, lambda: "writing another alternative" in header(), what="the third")
            assert "‹ 3/3 ›" in header() and "2/2" not in header()
            await pilot.press("escape")
            await wait_until(pilot, lambda: len(app.session.messages[-1].swipes) == 3, what="the third saved")
            await wait_idle(pilot, app)
            assert "‹ 3/3 ›" in header() and "(stopped)" in header()

    asyncio.run(run())


def test_a_turn_asked_for_while_a_reply_is_written_says_why(cattery_home: Path, engine) -> None:
    app = make_app(engine, sampler=greedy(2000, ban_eos=True), card_ref="none", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.session is not None, what="the chat")
            box(app).text = "Tell me a long story."
            await pilot.press("enter")
            await wait_until(pilot, lambda: chat_screen(app).turn is not None, what="the reply")
            await pilot.press("ctrl+g")
            await wait_until(pilot, lambda: notified(app, "Impersonate"), what="the reason")
            [line] = notified(app, "Impersonate")
            assert "being written" in line and "Esc stops it" in line
            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: notified(app, "A new alternative"), what="the reason for Ctrl+R")
            await pilot.press("escape")
            await wait_idle(pilot, app)
            assert len(app.session.messages) == 2 and box(app).text == ""  # nothing else started

    asyncio.run(run())


def test_delete_asks_when_a_message_has_alternatives_and_x_deletes_only_the_one_shown(
    cattery_home: Path, engine
) -> None:
    app = make_app(engine, card_ref="none", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.session is not None, what="the chat")
            s = app.session
            s.add_user("Hi")
            mid = s.store.add_message(s.chat_id, "assistant", "first")
            s.store.add_swipe(mid, "second")
            s.store.add_swipe(mid, "third")
            s.store.select_swipe(mid, 1)
            s.add_user("And?")
            s.store.add_message(s.chat_id, "assistant", "only one")
            s.reload()
            chat = chat_screen(app)
            chat.sync()
            await wait_until(pilot, lambda: len(views(app)) == 4, what="the messages")
            await select_last_message(pilot, app)
            # The only alternative of a message: x says how to delete the message instead.
            await pilot.press("x")
            await wait_until(pilot, lambda: notified(app, "only alternative"), what="the refusal")
            assert len(app.session.messages) == 4 and not isinstance(app.screen, ConfirmScreen)
            await pilot.press("up", "up")
            assert app.focused is views(app)[1]
            # d on a message with three alternatives: asked; No keeps all of them.
            await pilot.press("d")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            assert "all 3" in str(app.screen.query_one(".dialog-title").render())
            await pilot.press("n")
            await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="the answer")
            assert [len(m.swipes) for m in app.session.messages] == [1, 3, 1, 1]
            # x deletes the one shown ("second"), asked first; the message stays, showing the next.
            await pilot.press("x")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            assert "alternative 2 of 3" in str(app.screen.query_one(".dialog-title").render())
            await pilot.press("y")
            await wait_until(pilot, lambda: len(app.session.messages[1].swipes) == 2, what="the delete")
            m = app.session.messages[1]
            assert [w.text for w in m.swipes] == ["first", "third"] and m.text == "third"
            await wait_until(pilot, lambda: views(app)[1].body.source == "third", what="the view")
            assert "‹ 2/2 ›" in str(views(app)[1].query_one(".speaker").render())
            assert app.focused is views(app)[1]
            # d now asks about both; Yes deletes the message.
            await pilot.press("d")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            await pilot.press("y")
            await wait_until(pilot, lambda: len(app.session.messages) == 3, what="the message deleted")
            # The palette and F1 offer it.
            titles = [c.title for c in app.get_system_commands(chat)]
            assert "Message: Delete this alternative (not the message)" in titles

    asyncio.run(run())
    store = ChatStore(cattery_home / "data" / "chats.sqlite3")
    try:
        texts = [m.text for m in store.messages(int(store.get_state("last_chat") or 0))]
    finally:
        store.close()
    assert texts == ["Hi", "And?", "only one"]


# -- the character speaks again -------------------------------------------------------------


def test_enter_in_an_empty_box_lets_the_character_speak_again(cattery_home: Path, engine) -> None:
    app = make_app(engine, sampler=greedy(8), card_ref="bundled:mochi", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: len(views(app)) == 1, what="the greeting")
            await pilot.press("enter")  # the empty box
            await wait_until(pilot, lambda: len(app.session.messages) == 2, what="Mochi again")
            await wait_idle(pilot, app)
            await pilot.press("enter")
            await wait_until(pilot, lambda: len(app.session.messages) == 3, what="and again")
            await wait_idle(pilot, app)
            assert [m.role for m in app.session.messages] == ["assistant"] * 3
            assert [v.role for v in views(app)] == ["assistant"] * 3
            kinds = [m.swipes[0].provenance.get("kind") for m in app.session.messages[1:]]
            assert kinds == ["speak", "speak"]
            # The prompt of the last one ended with Mochi's turn opened after her own message.
            built = app.session.last_built
            assert built.text.endswith("<|im_end|>\n<|im_start|>assistant\n")
            # After the user's message, Enter on the empty box is a plain reply to it.
            app.session.add_user("Hello?")
            chat_screen(app).sync()
            await pilot.press("enter")
            await wait_until(pilot, lambda: len(app.session.messages) == 5, what="the reply")
            await wait_idle(pilot, app)
            assert app.session.messages[-1].swipes[0].provenance.get("kind") == "reply"

    asyncio.run(run())


def test_two_turns_of_the_character_in_a_row_in_every_kind_of_format(model_path: Path) -> None:
    """Formats that open a turn with its own marker keep the history; formats where the user's
    suffix opens the reply (Llama 2, Mistral) and templates that insist on alternating roles get
    an empty user turn between, so the prompt never ends inside a user instruction."""
    from app.engine.metadata import read_model_info
    from app.prompt.builder import PromptBuilder
    from app.prompt.segments import Message
    from app.session.chat import speak_again_history

    history = [Message("user", "Hi"), Message("assistant", "Hello!")]
    for name, ending in [
        ("chatml", "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n"),
        ("llama3", "Hello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
        ("metharme", "<|model|>Hello!<|model|>"),
        ("alpaca", "### Response:\nHello!\n\n### Response:\n"),
        ("vicuna", " ASSISTANT: Hello!</s> ASSISTANT:"),
        ("llama2", " Hello! </s><s>[INST]  [/INST]"),
        ("mistral", "Hello!</s>[INST]  [/INST]"),
    ]:
        builder = PromptBuilder(name, system="S")
        text = builder.build(speak_again_history(builder, history)).text
        assert text.endswith(ending), (name, text[-60:])
    # The bundled model's ChatML template takes two assistant turns as they are.
    info = read_model_info(model_path)
    builder = PromptBuilder("gguf", info=info, system="S")
    assert speak_again_history(builder, history) == history
    # A template that refuses them gets the empty user turn, and renders.
    info.chat_template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate user/assistant/user/assistant') }}{% endif %}"
        "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %}{{ m['content'] }}</s>{% endif %}"
        "{% endfor %}"
    )
    builder = PromptBuilder("gguf", info=info)
    again = speak_again_history(builder, history)
    assert again == [*history, Message("user", "")]
    assert builder.build(again).text.endswith("Hello!</s>[INST]  [/INST]")


def test_an_empty_line_in_the_line_chat_lets_the_character_speak_again(cattery_home: Path) -> None:
    from tests.conftest import run_cattery

    r = run_cattery(
        "chat", "--plain", "--card", "mochi", "--temp", "0", "--max-tokens", "8", input="\n", home=cattery_home
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()  # Mochi's second message, after her greeting (on stderr)
    assert "error" not in r.stderr


# -- a small terminal -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(40, 12), (60, 16)], ids=["40x12", "60x16"])
def test_the_chat_works_in_a_small_terminal(cattery_home: Path, engine, size: tuple[int, int]) -> None:
    app = make_app(engine, sampler=greedy(4), card_ref="bundled:mochi", card_explicit=True, new_chat=True)

    async def run() -> None:
        async with app.run_test(size=size) as pilot:
            await wait_until(pilot, lambda: len(views(app)) == 1, what="the greeting")
            chat = chat_screen(app)
            await type_and_send(pilot, app, "hi")
            await settle_on(pilot, lambda: last_on_screen(app), "the last message on screen")
            title = chat.query_one("#chat-title")
            # The title keeps room for the character's name; the model line takes what is left.
            assert title.region.width >= 12 and "Mochi" in str(title.render())
            screen = chat.region
            for part in ("#chat-title", "#messages", "#status", "#input"):
                region = chat.query_one(part).region
                assert region.height > 0 and screen.contains_region(region), part
            assert chat.query_one("#messages").region.height >= 5
            assert app.focused is box(app)

    asyncio.run(run())


# -- what is typed survives ---------------------------------------------------------------------


def test_what_is_typed_survives_screens_a_stop_settings_and_a_model_reload(cattery_home: Path, model_path) -> None:
    app = make_app(sampler=greedy(4), card_ref="none", card_explicit=True)  # its own engine: it reloads

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.model_status.state == "ready", what="the model")
            await wait_until(pilot, lambda: app.session is not None, what="the chat")
            await pilot.press(*"a thought")
            await goto(pilot, app, "f3", "characters")
            await goto(pilot, app, "f2", "chat")
            assert box(app).text == "a thought"
            # Settings saved at once after typing (before the draft is stored) redraw the chat.
            await pilot.press(*" more")
            app.apply_settings()
            await pilot.pause(0.3)
            assert box(app).text == "a thought more"
            # The model reloaded.
            app.load_model(model_path)
            await wait_until(pilot, lambda: app.model_status.state == "loading", what="the reload")
            await wait_until(pilot, lambda: app.model_status.state == "ready", what="the model again")
            assert box(app).text == "a thought more"
            # Impersonate goes on from what is typed, and a stop keeps it.
            box(app).text = "I think"
            long_reply(app)
            await pilot.press("ctrl+g")
            await wait_until(pilot, lambda: len(box(app).text) > len("I think") + 5, what="the line")
            await pilot.press("escape")
            await wait_idle(pilot, app)
            assert box(app).text.startswith("I think")
            await wait_until(pilot, lambda: app.session.draft == box(app).text, what="the draft saved")

    try:
        asyncio.run(run())
    finally:
        app.engine.close()


def test_words_typed_just_before_quitting_are_kept(cattery_home: Path, engine) -> None:
    """The draft is saved after a pause in typing; quitting within that pause kept nothing."""
    app = make_app(engine, card_ref="bundled:mochi", card_explicit=True)

    async def run() -> int:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: len(views(app)) == 1, what="the greeting")
            await pilot.press(*"quick words")
            await pilot.press("ctrl+q")
        return app.session.chat_id

    chat_id = asyncio.run(run())
    again = make_app(engine)

    async def reopen() -> None:
        async with again.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: again.session is not None and again.session.chat_id == chat_id)
            await wait_until(pilot, lambda: box(again).text == "quick words", what="the words typed")

    asyncio.run(reopen())
