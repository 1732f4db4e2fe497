"""The full-screen chat (preview), driven by Textual's Pilot on the real bundled model and real SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.chats.store import ChatStore
from app.engine.options import SamplerSettings
from app.prompt.builder import PromptBuilder
from app.prompt.tokens import tokenizer_from
from app.tui.app import CatteryApp, ChatInput
from app.tui.session import ChatSession


def make_session(engine, tmp_path: Path, max_tokens: int = 24) -> ChatSession:
    store = ChatStore(tmp_path / "chats.sqlite3")
    builder = PromptBuilder("gguf", info=engine.info, tokenizer=tokenizer_from(engine), system="Be brief.")
    chat_id = store.create_chat("Test chat")
    session = ChatSession(
        engine, builder, SamplerSettings(temperature=0.0, max_tokens=max_tokens), store, chat_id, "Test chat", "gguf"
    )
    session.append("assistant", "Hello! Ask me anything.")
    return session


async def wait_until(pilot, condition, timeout: float = 60.0) -> None:
    waited = 0.0
    while not condition():
        await pilot.pause(0.1)
        waited += 0.1
        assert waited < timeout, "timed out"


def test_send_a_message_and_see_the_streamed_reply_saved(engine, tmp_path: Path) -> None:
    session = make_session(engine, tmp_path)
    app = CatteryApp(session)

    async def run() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            box = app.query_one(ChatInput)
            box.text = "What is the capital of France?"
            await pilot.press("enter")
            await wait_until(pilot, lambda: len(session.history) == 3)
            await pilot.pause(0.2)
            shown = app.query("Markdown").last()
            assert session.history[-1].content.split()[0] in shown.source

    asyncio.run(run())
    rows = session.store.messages(session.chat_id)
    assert [m.role for m in rows] == ["assistant", "user", "assistant"]
    assert rows[1].text == "What is the capital of France?"
    assert rows[2].text and rows[2].state == "done"
    assert rows[2].swipes[0].provenance["seed"] is not None


def test_escape_stops_a_reply_and_keeps_it_as_stopped(engine, tmp_path: Path) -> None:
    session = make_session(engine, tmp_path, max_tokens=2000)
    session.sampler.ban_eos = True
    app = CatteryApp(session)

    async def run() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            app.query_one(ChatInput).text = "Tell me a very long story."
            await pilot.press("enter")
            await wait_until(pilot, lambda: app._generation is not None)
            await pilot.pause(0.5)
            await pilot.press("escape")
            await wait_until(pilot, lambda: len(session.history) == 3)

    asyncio.run(run())
    last = session.store.messages(session.chat_id)[-1]
    assert last.state == "stopped" and last.text


def test_regenerate_makes_a_swipe_and_swiping_goes_back(engine, tmp_path: Path) -> None:
    session = make_session(engine, tmp_path)
    session.sampler.temperature = 1.0
    app = CatteryApp(session)

    async def run() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            app.query_one(ChatInput).text = "Say something."
            await pilot.press("enter")
            await wait_until(pilot, lambda: len(session.history) == 3 and app._generation is None)
            await pilot.pause(0.2)
            first = session.history[-1].content
            await pilot.press("ctrl+r")
            await wait_until(
                pilot, lambda: len(session.store.messages(session.chat_id)[-1].swipes) == 2 and app._generation is None
            )
            await pilot.pause(0.2)
            assert len(session.history) == 3
            await pilot.press("alt+left")
            await pilot.pause(0.2)
            assert session.history[-1].content == first
            assert app.query("Markdown").last().source == first

    asyncio.run(run())
    last = session.store.messages(session.chat_id)[-1]
    assert len(last.swipes) == 2 and last.active == 0
