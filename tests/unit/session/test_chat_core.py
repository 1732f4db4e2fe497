"""Issue 17's one chat core: the line chat over ChatSession on an in-memory store, the one model-load
resolver on Workspace, and the one reply reserve."""

from __future__ import annotations

import io
from pathlib import Path

from app.chats.store import ChatStore
from app.engine.options import SamplerSettings
from app.plain_chat import PlainChat
from app.prompt.builder import FormatChoice
from app.session.chat import ChatSession, new_chat_seed, reply_reserve, restart_session
from app.session.workspace import ModelLoad, Workspace

GREEDY = SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=12)


def line_chat(ws: Workspace, engine, card: str, script: str) -> tuple[PlainChat, io.StringIO, io.StringIO]:
    ref, character = ws.resolve_character(card)
    seed = new_chat_seed()
    recipe = ws.recipe(character, chat_seed=seed, card_ref=ref)
    session = ChatSession.create(ChatStore(Path(":memory:")), recipe, GREEDY, card_ref=ref, chat_seed=seed)
    session.attach(engine, FormatChoice("gguf", "GGUF chat template"))
    out, err = io.StringIO(), io.StringIO()
    chat = PlainChat(
        session,
        lambda: restart_session(ws, chat.session),
        stdin=io.StringIO(script),
        stdout=out,
        stderr=err,
        format_note="gguf",
    )
    return chat, out, err


def test_reply_reserve_is_max_tokens_capped_at_half_the_context() -> None:
    assert reply_reserve(512, 4096) == 512
    assert reply_reserve(4000, 2048) == 1024
    assert reply_reserve(300, None) == 300  # no model: nothing to cap against


def test_the_line_chat_keeps_its_turns_in_the_session_and_nothing_on_disk(ws: Workspace, engine) -> None:
    chat, out, err = line_chat(ws, engine, "mochi", "/greeting 2\nHello {{char}}\n\n/reset\n/quit\n")
    chat.greet()
    assert "keyboard" in err.getvalue()  # not interactive: the greeting goes to stderr
    assert chat.run() == 0
    session = chat.session
    assert "physics papers" in out.getvalue()  # /greeting 2 printed the second greeting
    # /reset kept the chosen greeting and forgot the rest; the window starts over.
    assert [m.role for m in session.messages] == ["assistant"] and "physics papers" in session.messages[0].text
    assert session.window.start == 0
    assert session.last_built is not None and session.last_stats is not None
    assert not ws.paths.chats_db.exists()


def test_the_users_macros_expand_and_a_failed_turn_leaves_no_message(ws: Workspace, engine) -> None:
    chat, _, err = line_chat(ws, engine, "mochi", "")
    chat.reply("Hi {{char}}")
    session = chat.session
    assert [m.role for m in session.messages] == ["assistant", "user", "assistant"]
    assert session.messages[1].text == "Hi Mochi"
    session.detach()  # no model: the turn cannot start, and the user's line is taken back
    chat.reply("Anyone there?")
    assert len(session.messages) == 3 and "no model is loaded" in err.getvalue()


def test_one_model_load_for_the_cli_and_the_app(ws: Workspace, model_path: Path) -> None:
    ws.save_load_settings(model_path, {"ctx": 1024, "format": "chatml", "threads": 2})
    plan = ws.model_load(model_path, {"threads": 3, "ctx": None})
    assert isinstance(plan, ModelLoad) and plan.path == model_path
    assert plan.options.ctx == 1024 and plan.options.threads == 3  # the saved file's, the caller's on top
    assert plan.format == "chatml" and plan.default_ctx == ws.default_ctx
    assert ws.model_load(model_path, fmt="raw").format == "raw"  # asked for beats saved
    assert ws.chat_format(plan.path, None, plan.format).name == "chatml"
