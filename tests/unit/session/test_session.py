"""A chat in progress (app/session) on the real bundled model and real SQLite: every turn kind,
edits, swipes, branches, provenance, the window kept across reopening."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app.engine.options import SamplerSettings
from app.errors import CatteryError
from app.prompt.builder import FormatChoice, Opening, PromptBuilder
from app.prompt.segments import Message
from app.prompt.tokens import tokenizer_from
from app.session.chat import ChatSession, hash_model, open_session, start_session
from app.session.workspace import Workspace

GREEDY = SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=24)


def attached(session: ChatSession, engine) -> ChatSession:
    session.attach(engine, FormatChoice("gguf", "GGUF chat template"))
    return session


def test_a_new_chat_opens_with_the_greetings_as_alternatives(ws: Workspace, engine) -> None:
    s = start_session(ws, "mochi", greeting=1, sampler=GREEDY)
    assert s.card_ref == "bundled:mochi" and s.char_name == "Mochi"
    [greeting] = s.messages
    assert greeting.role == "assistant" and len(greeting.swipes) == 2 and greeting.active == 1
    assert "physics papers" in greeting.text and "{{user}}" not in greeting.text
    # Swiping the greeting before writing anything changes how the chat opens.
    assert s.select_swipe(0, -1) == (0, 2) and "keyboard" in s.messages[0].text
    assert s.select_swipe(0, -1) is None
    with pytest.raises(CatteryError, match="greeting"):
        attached(s, engine).begin("regenerate")


def test_reply_regenerate_continue_and_provenance(ws: Workspace, engine, model_path: Path) -> None:
    s = attached(start_session(ws, "none", sampler=GREEDY, system="Be brief."), engine)
    assert s.messages == []
    s.add_user("What is the capital of France?")
    out = s.run("reply")
    assert out.kind == "reply" and out.index == 1 and not out.stopped and "Paris" in out.text
    stored = ws.store.messages(s.chat_id)
    assert [m.role for m in stored] == ["user", "assistant"] and stored[1].text == out.text
    prov = stored[1].swipes[0].provenance
    assert prov["model"]["file"] == model_path.name and prov["model"]["quant"] == "Q4_1"
    assert prov["format"] == "gguf" and prov["sampler"]["temperature"] == 0.0 and prov["seed"] is not None
    assert prov["prompt_evaluated"] > 0 and prov["generated_tokens"] > 0 and prov["tokens_per_second"] > 0

    # Greedy regeneration writes the same text as a second alternative of the same message.
    again = s.run("regenerate")
    assert again.index == 1 and again.text == out.text
    assert len(s.messages[1].swipes) == 2 and s.messages[1].active == 1

    # Continuing a reply cut short: the prompt is the whole message without its end of turn.
    s.edit(1, "The capital of France is")
    turn = s.begin("continue")
    full = s.builder.build(s.history(), n_ctx=engine.n_ctx, reserve=s.reserve)
    end_of_turn = "<|im_end|>\n"
    whole = "".join(seg.text for seg in full.segments if seg.kind != "generation")
    assert turn.built.text == whole[: -len(end_of_turn)]
    turn.generation.result()
    done = s.finish(turn)
    assert done.text.startswith("The capital of France is") and len(done.text) > len("The capital of France is")
    assert "Paris" in done.text
    cont = s.messages[1].swipes[1].provenance["continued"]
    assert len(cont) == 1 and cont[0]["kind"] == "continue"

    # The hash is filled in after the fact, into every reply made before it was known.
    assert prov["model"]["sha256"] is None
    digest = hash_model(ws.store, model_path)
    assert all(sw.provenance["model"]["sha256"] == digest for sw in ws.store.messages(s.chat_id)[1].swipes)


def test_impersonation_opens_the_users_turn_and_saves_nothing(ws: Workspace, engine) -> None:
    s = attached(start_session(ws, "none", sampler=GREEDY), engine)
    s.add_user("Hi!")
    s.run("reply")
    turn = s.begin("impersonate")
    assert turn.built.text.endswith("<|im_end|>\n<|im_start|>user\n")
    turn.generation.result()
    out = s.finish(turn)
    assert out.index is None and out.text
    assert len(ws.store.messages(s.chat_id)) == 2


def test_openings_in_a_format_with_names(engine) -> None:
    """Pygmalion writes "Name: text" turns: continuing keeps the name, impersonating opens the user's."""
    b = PromptBuilder("pygmalion", info=engine.info, tokenizer=tokenizer_from(engine), system="Mira is a cat.")
    b.speakers = type(b.speakers)("Anon", "Mira")
    history = [Message("user", "Hello."), Message("assistant", "Meow, I")]
    cont = b.build(history[:1], opening=Opening("assistant", "Meow, I"))
    assert cont.text.endswith("<START>\nYou: Hello.\nMira: Meow, I")
    imp = b.build(history, opening=Opening("user"))
    assert imp.text.endswith("You: Hello.\nMira: Meow, I\nYou: ")


def test_stopping_keeps_the_partial_text_as_stopped(ws: Workspace, engine) -> None:
    s = attached(start_session(ws, "none", sampler=GREEDY.updated(max_tokens=2000, ban_eos=True)), engine)
    s.add_user("Count to a thousand.")
    turn = s.begin("reply")
    pieces = []
    for piece in turn.generation:
        pieces.append(piece)
        if len("".join(pieces)) > 20:
            threading.Timer(0.0, turn.cancel).start()
    out = s.finish(turn)
    assert out.stopped and out.text
    last = ws.store.messages(s.chat_id)[-1]
    assert last.state == "stopped" and last.text == out.text


def test_edit_delete_branch_and_the_window_survive_reopening(ws: Workspace, engine) -> None:
    s = attached(start_session(ws, "none", sampler=GREEDY), engine)
    for i in range(3):
        s.add_user(f"Message {i}")
        ws.store.add_message(s.chat_id, "assistant", f"Reply {i}")
        s.reload()
    s.edit(2, "Message one, edited")
    assert s.messages[2].text == "Message one, edited"
    s.window.start = 2
    s._save_window()
    branch_id = s.branch(3)
    b = open_session(ws, branch_id, sampler=GREEDY)
    assert [m.text for m in b.messages] == ["Message 0", "Reply 0", "Message one, edited", "Reply 1"]
    assert b.extra["branched_from"] == s.chat_id and b.chat_seed == s.chat_seed
    assert s.delete(4, and_after=True) == 2 and len(s.messages) == 4
    assert s.delete(0) == 1 and s.window.start == 1  # a message before the window: it moves with it
    again = attached(open_session(ws, s.chat_id, sampler=GREEDY), engine)
    assert again.window.start == 1 and again.messages[0].text == "Reply 0"
    preview = again.preview()
    assert preview is not None and preview.first_kept == 1 and preview.pinned > 0
    assert preview.used + preview.free == engine.n_ctx


def test_the_draft_and_state_are_kept(ws: Workspace) -> None:
    s = start_session(ws, "mochi")
    s.save_draft("half a thought")
    again = open_session(ws, s.chat_id)
    assert again.draft == "half a thought" and again.recipe.card is not None
    assert ws.store.latest_chat("bundled:mochi") == s.chat_id
