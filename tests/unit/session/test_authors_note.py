"""The Author's Note (issue 14): inserted at a depth, on a frequency, in a role, with macros; kept
out of the pinned block and out of the window's evictions; the KV cache keeps the prefix before it;
set from the CLI and from the app, saved with the chat."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from app.chats.store import ChatStore
from app.engine.reuse import plan_reuse
from app.errors import CatteryError
from app.prompt.segments import Message
from app.prompt.window import WindowState
from app.session.authors_note import AuthorsNote, note_from_options
from app.session.recipe import PromptRecipe
from tests.conftest import run_cattery
from tests.tui_helpers import SIZE, make_app, send, wait_until

HISTORY = [
    Message("assistant", "Hello."),
    Message("user", "u1"),
    Message("assistant", "a1"),
    Message("user", "u2"),
]
NOTE = "Stay in character as {{char}}; {{user}} is listening."
SAID = "Stay in character as Bob; Ann is listening."


def prompt(fmt: str, note: AuthorsNote | None, history: list[Message] = HISTORY) -> str:
    recipe = PromptRecipe("SYS", "Ann", "Bob", note=note)
    return recipe.builder(fmt, None, None).build(history).text


# -- the exact prompt text -----------------------------------------------------------------

CHATML = {
    "sys": "<|im_start|>system\nSYS<|im_end|>\n",
    "hello": "<|im_start|>assistant\nHello.<|im_end|>\n",
    "u1": "<|im_start|>user\nu1<|im_end|>\n",
    "a1": "<|im_start|>assistant\na1<|im_end|>\n",
    "u2": "<|im_start|>user\nu2<|im_end|>\n",
    "note": f"<|im_start|>system\n{SAID}<|im_end|>\n",
    "gen": "<|im_start|>assistant\n",
}
ALPACA = {
    "sys": "SYS\n\n",
    "hello": "### Response:\nHello.\n\n",
    "u1": "### Instruction:\nu1\n\n",
    "a1": "### Response:\na1\n\n",
    "u2": "### Instruction:\nu2\n\n",
    "note": f"{SAID}\n\n",
    "gen": "### Response:\n",
}
METHARME = {
    "sys": "<|system|>SYS",
    "hello": "<|model|>Hello.",
    "u1": "<|user|>u1",
    "a1": "<|model|>a1",
    "u2": "<|user|>u2",
    "note": f"<|system|>{SAID}",
    "gen": "<|model|>",
}
LLAMA2 = {  # no system role after the first instruction: a later system message is an instruction
    "sys": "[INST] <<SYS>>\nSYS\n<</SYS>>\n\n",
    "hello": " Hello. </s><s>[INST] ",
    "u1": "u1 [/INST]",
    "a1": " a1 </s><s>[INST] ",
    "u2": "u2 [/INST]",
    "note": f"{SAID} [/INST]",
    "gen": "",
}
ORDER = {
    0: ["sys", "hello", "u1", "a1", "u2", "note", "gen"],
    2: ["sys", "hello", "u1", "note", "a1", "u2", "gen"],
    4: ["sys", "note", "hello", "u1", "a1", "u2", "gen"],
}


@pytest.mark.parametrize(
    "fmt, parts", [("chatml", CHATML), ("alpaca", ALPACA), ("metharme", METHARME), ("llama2", LLAMA2)]
)
@pytest.mark.parametrize("depth", [0, 2, 4])
def test_the_note_goes_in_at_its_depth_in_each_format(fmt: str, parts: dict[str, str], depth: int) -> None:
    text = prompt(fmt, AuthorsNote(NOTE, depth=depth))
    assert text == "".join(parts[k] for k in ORDER[depth])
    without = prompt(fmt, None)
    assert without == "".join(parts[k] for k in ORDER[depth] if k != "note")


def test_a_user_role_note_is_a_user_message() -> None:
    text = prompt("chatml", AuthorsNote(NOTE, depth=0, role="user"))
    assert text.endswith(f"<|im_start|>user\nu2<|im_end|>\n<|im_start|>user\n{SAID}<|im_end|>\n<|im_start|>assistant\n")


def test_every_second_user_turn_as_sillytavern_counts() -> None:
    note = AuthorsNote(NOTE, depth=0, every=2)
    one_user = HISTORY[:2]  # one user message: not yet
    assert SAID not in prompt("chatml", note, one_user)
    assert prompt("chatml", note, HISTORY).count(SAID) == 1  # two: in
    three = [*HISTORY, Message("assistant", "a2"), Message("user", "u3")]
    assert SAID not in prompt("chatml", note, three)
    four = [*three, Message("assistant", "a3"), Message("user", "u4")]
    assert prompt("chatml", note, four).count(SAID) == 1
    assert SAID not in prompt("chatml", AuthorsNote(NOTE, every=0), HISTORY)  # 0: never
    assert all(SAID in prompt("chatml", AuthorsNote(NOTE, every=1), h) for h in (HISTORY[:1], HISTORY))
    # How many of the user's messages until it goes in: the one about to be sent counts.
    assert note.turns_until(HISTORY) == 0  # the reply to u2 (the second) has it
    assert note.turns_until([*HISTORY, Message("assistant", "a2")]) == 1  # u3 would be the third: odd
    assert note.turns_until(HISTORY[:3]) == 0  # u2 would be the second
    assert AuthorsNote(NOTE, every=0).turns_until(HISTORY) is None


def test_continue_keeps_the_continued_reply_last() -> None:
    """Continuing a reply with a note at depth 0: the note goes before the reply being continued."""
    from app.prompt.builder import Opening

    recipe = PromptRecipe("SYS", "Ann", "Bob", note=AuthorsNote(NOTE, depth=0))
    built = recipe.builder("chatml", None, None).build(HISTORY, opening=Opening("assistant", "Well,"))
    assert built.text.endswith(f"{CHATML['u2']}{CHATML['note']}<|im_start|>assistant\nWell,")


def test_the_note_is_checked_and_stored_values_are_read_leniently() -> None:
    for bad in ({"depth": -1}, {"every": -2}, {"role": "narrator"}, {"depth": 10**6}):
        with pytest.raises(CatteryError):
            AuthorsNote(NOTE, **bad)
    # A row another tool (or a damaged disk) left in the database: read as far as it makes sense.
    assert AuthorsNote.from_dict({"text": "x", "depth": "deep", "every": -5, "role": 3}) == AuthorsNote("x", 4, 0)
    assert AuthorsNote.from_dict({"text": "x", "depth": 1e300, "every": float("nan")}) == AuthorsNote("x", 10_000, 1)
    assert AuthorsNote.from_dict(["x"]) is None and AuthorsNote.from_dict({"text": ""}) is None
    # The command line changes only what it names; an empty text removes the note.
    base = AuthorsNote("old", depth=2, every=3, role="user")
    assert note_from_options(base, depth=0) == AuthorsNote("old", 0, 3, "user")
    assert note_from_options(base, text="") is None
    with pytest.raises(CatteryError, match="--author-note"):
        note_from_options(None, depth=1)


# -- the window and the KV cache ------------------------------------------------------------


def long_chat(n: int) -> list[Message]:
    out = [Message("assistant", "Welcome to the harbour, traveller.")]
    for i in range(n):
        out.append(Message("user", f"Tell me about ship number {i}, its sails and its crew."))
        out.append(Message("assistant", f"Ship {i} has red sails, a crew of {i + 3} and a cat named Biscuit {i}."))
    return out


def test_the_note_is_never_pinned_nor_evicted_and_the_cache_keeps_what_comes_before_it(engine) -> None:
    from app.prompt.tokens import tokenizer_from

    tok = tokenizer_from(engine)
    note = AuthorsNote("Remember: {{char}} is a pirate.", depth=2)
    recipe = PromptRecipe("You are a ship's cat.", "Ann", "Bob", note=note)
    with_note = recipe.builder("chatml", engine.info, tok)
    plain = PromptRecipe("You are a ship's cat.", "Ann", "Bob").builder("chatml", engine.info, tok)

    history = [*long_chat(30), Message("user", "And ship 30?")]
    state = WindowState()
    built = with_note.build(history, n_ctx=512, reserve=64, state=state)
    base = plain.build(history, n_ctx=512, reserve=64, state=WindowState())
    # The window slid, the note is in it, counted in the budget, and the pinned block is the same.
    assert built.kept[0] > 0 and len(built.tokens) <= 512 - 64
    assert built.pinned_tokens == base.pinned_tokens
    notes = [i for i, s in enumerate(built.segments) if s.kind == "note"]
    assert len(notes) == 1
    turns_after = [s.index for s in built.segments[notes[0] + 1 :] if s.kind == "turn"]
    assert turns_after == [len(history) - 2, len(history) - 1]
    assert "Remember: Bob is a pirate." in built.segments[notes[0]].text
    assert built.insertions[0].segment == notes[0] and built.insertions[0].before == len(history) - 2
    # With a tokenizer that adds a BOS (llama models), the segment numbers count the BOS segment too.
    from app.prompt.tokens import SegmentTokenizer

    with_bos = SegmentTokenizer(engine.segment_tokenize, engine.detokenize, engine.bos_token, True)
    bos_built = recipe.builder("chatml", None, with_bos).build(history, n_ctx=512, reserve=64)
    assert bos_built.segments[0].kind == "bos"
    assert bos_built.segments[bos_built.insertions[0].segment].kind == "note"

    # The next turn: the reply and a new message. The cache keeps everything before where the note
    # was, and shifts the two messages after it into place: only the note, the two new messages and
    # the reply's opening are evaluated, never the chat before them.
    history2 = [*history, Message("assistant", "Ship 30 sank."), Message("user", "Pity.")]
    built2 = with_note.build(history2, n_ctx=512, reserve=64, state=state)
    assert built2.kept[0] == built.kept[0]  # no eviction this turn: one shift is all it takes
    old_note_at = sum(len(s.tokens) for s in built.segments[: notes[0]])
    plan = plan_reuse(built.tokens, built2.tokens, can_shift=True)
    assert plan.keep >= old_note_at
    new_note = next(i for i, s in enumerate(built2.segments) if s.kind == "note")
    assert [s.index for s in built2.segments[new_note + 1 :] if s.kind == "turn"] == [len(history), len(history) + 1]
    tail = sum(len(s.tokens) for s in built2.segments[new_note:])
    assert plan.to_evaluate <= tail + 2, (plan, tail)
    assert plan.reused >= len(built2.tokens) - tail - 2

    # A note deeper than the window goes first in the window, still after the pinned block.
    deep = dataclasses.replace(recipe, note=AuthorsNote("Remember the sea.", depth=500))
    built3 = deep.builder("chatml", engine.info, tok).build(history, n_ctx=512, reserve=64, state=WindowState())
    kinds = [s.kind for s in built3.segments]
    assert kinds[kinds.index("pinned") + 1] == "note"
    assert built3.insertions[0].before == built3.kept[0]


def test_a_template_that_wants_alternating_roles_gets_the_note_inside_a_user_message(engine) -> None:
    from app.prompt.tokens import tokenizer_from

    strict = (
        "{% for m in messages %}"
        "{% if m['role'] == 'system' and not loop.first %}{{ raise_exception('roles must alternate') }}{% endif %}"
        "<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    info = dataclasses.replace(engine.info, chat_template=strict)
    recipe = PromptRecipe("SYS", "Ann", "Bob", note=AuthorsNote("Be terse.", depth=0))
    built = recipe.builder("gguf", info, tokenizer_from(engine)).build(HISTORY, n_ctx=2048, reserve=64)
    assert built.text.endswith("<user>u2\n\nBe terse.</s><assistant>")
    assert built.insertions[0].folded_into == 3 and any("joins a user message" in n for n in built.notes)
    # The model's own template (SmolLM2's ChatML) takes the note as a system message of its own.
    own = recipe.builder("gguf", engine.info, tokenizer_from(engine)).build(HISTORY, n_ctx=2048, reserve=64)
    assert own.text.endswith(
        "<|im_start|>user\nu2<|im_end|>\n<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert [s.kind for s in own.segments][-2:] == ["note", "generation"] and own.insertions[0].folded_into is None
    recipe2 = dataclasses.replace(recipe, note=AuthorsNote("Be terse.", depth=2))
    built2 = recipe2.builder("gguf", info, tokenizer_from(engine)).build(HISTORY, n_ctx=2048, reserve=64)
    assert "<user>u1</s><assistant>a1</s><user>Be terse.\n\nu2</s>" in built2.text


# -- the command line ------------------------------------------------------------------------


def test_cattery_prompt_shows_where_the_note_went(cattery_home: Path, tmp_path: Path) -> None:
    history = tmp_path / "h.json"
    history.write_text(json.dumps([{"role": m.role, "content": m.content} for m in HISTORY]))
    args = ["prompt", "--format", "chatml", "--card", "none", "--char", "Bob", "--user", "Ann", "--system", "SYS"]
    r = run_cattery(
        *args,
        "--history",
        str(history),
        "--author-note",
        NOTE,
        "--note-depth",
        "2",
        "--note-every",
        "2",
        "--json",
        home=cattery_home,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] == "".join(CHATML[k] for k in ORDER[2])
    note = out["author_note"]
    assert note["inserted"] and note["depth"] == 2 and note["every"] == 2 and note["role"] == "system"
    assert note["before_message"] == 2 and out["segments"][note["segment"]]["kind"] == "note"
    assert out["insertions"][0]["text"] == SAID
    r = run_cattery(*args, "--history", str(history), "--author-note", NOTE, "--note-role", "user", home=cattery_home)
    assert r.returncode == 0 and f"<|im_start|>user\n{SAID}" in r.stdout
    for bad, said in (
        (["--author-note", "x", "--note-depth", "-1"], "depth must be 0 to"),
        (["--note-every", "3"], "give it with --author-note"),
        (["--author-note", "x", "--note-role", "narrator"], "invalid choice"),  # argparse's usage, then its line
    ):
        r = run_cattery(*args, *bad, home=cattery_home)
        assert r.returncode != 0 and said in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr
        if said != "invalid choice":
            assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_line_chat_takes_a_note_and_lore_reports_it(cattery_home: Path) -> None:
    r = run_cattery(
        "chat",
        "--plain",
        "--card",
        "none",
        "--temp",
        "0",
        "-n",
        "4",
        "--author-note",
        "Answer in French.",
        "--note-depth",
        "0",
        input="Hello there\n/lore\n",
        home=cattery_home,
    )
    assert r.returncode == 0, r.stderr
    assert (
        "Author's Note as system, right before the reply, every user turn: in the last prompt, right before the reply"
        in r.stdout
    )


# -- the app ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_note_dialog_saves_with_the_chat_and_reaches_the_prompt(cattery_home: Path, engine) -> None:
    from textual.widgets import Input, TextArea

    from app.tui.screens.authors_note import AuthorsNoteScreen

    app = make_app(engine, card_ref="none", card_explicit=True, system="Be brief.", new_chat=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.session is not None and app.session.ready, what="the chat")
            await pilot.press("f10")
            await wait_until(pilot, lambda: isinstance(app.screen, AuthorsNoteScreen), what="the dialog")
            dialog = app.screen
            dialog.query_one("#note-text", TextArea).text = "Speak like {{char}} the pirate."
            dialog.query_one("#note-depth", Input).value = "0"
            dialog.query_one("#note-every", Input).value = "1"
            await pilot.click("#note-role-user")
            await pilot.pause()
            assert "next message gets it, as a user message right before the reply" in str(
                dialog.query_one("#note-when").render()
            )
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: not isinstance(app.screen, AuthorsNoteScreen), what="saved")
            assert app.session.note == AuthorsNote("Speak like {{char}} the pirate.", 0, 1, "user")
            await send(pilot, app, "Ahoy")
            built = app.session.last_built
            assert built is not None and [s.kind for s in built.segments][-2:] == ["note", "generation"]
            assert "Speak like Assistant the pirate." in built.segments[-2].text
            assert "<|im_start|>user" in built.segments[-2].text
            # Esc leaves it as it was; Remove takes it away.
            await pilot.press("f10")
            await wait_until(pilot, lambda: isinstance(app.screen, AuthorsNoteScreen), what="the dialog")
            await pilot.press("escape")
            await wait_until(pilot, lambda: not isinstance(app.screen, AuthorsNoteScreen), what="closed")
            assert app.session.note == AuthorsNote("Speak like {{char}} the pirate.", 0, 1, "user")
            saved.append(ChatStore(cattery_home / "data" / "chats.sqlite3"))
            extra = saved[0].chat(app.session.chat_id)["extra"]
            assert extra["author_note"] == {
                "text": "Speak like {{char}} the pirate.",
                "depth": 0,
                "every": 1,
                "role": "user",
            }
            await pilot.press("f10")
            await wait_until(pilot, lambda: isinstance(app.screen, AuthorsNoteScreen), what="the dialog")
            await pilot.click("#remove")
            await wait_until(pilot, lambda: app.session.note is None, what="removed")
            assert saved[0].chat(app.session.chat_id)["extra"]["author_note"] is None

    saved: list[ChatStore] = []
    try:
        asyncio.run(run())
        chat_id = int(saved[0].get_state("last_chat") or 0)
    finally:
        for store in saved:
            store.close()

    # Reopened (another run): the command line's note is saved with the chat; only what it names changes.
    from app.session.chat import open_session
    from app.session.workspace import Workspace

    ws = Workspace()
    try:
        assert open_session(ws, chat_id).note is None
        first = open_session(ws, chat_id, note={"text": "Be {{char}}.", "depth": None, "every": 2, "role": None})
        assert first.note == AuthorsNote("Be {{char}}.", 4, 2, "system")
        again = open_session(ws, chat_id, note={"text": None, "depth": 3, "every": None, "role": None})
        assert again.note == AuthorsNote("Be {{char}}.", 3, 2, "system")
        assert open_session(ws, chat_id).note == AuthorsNote("Be {{char}}.", 3, 2, "system")
        branch = ws.store.branch(chat_id, again.messages[-1].id)
        assert open_session(ws, branch).note == again.note  # a branch keeps the note
    finally:
        ws.close()


def test_a_sillytavern_chat_file_brings_its_note_and_takes_it_along(cattery_home: Path, tmp_path: Path) -> None:
    from app.chats.transfer import export_st_chat, import_st_chat

    st = tmp_path / "st.jsonl"
    header = {
        "user_name": "Ann",
        "character_name": "Bob",
        "create_date": "2024-01-01@10h00m00s",
        "chat_metadata": {"note_prompt": NOTE, "note_interval": 2, "note_position": 1, "note_depth": 0, "note_role": 1},
    }
    lines = [header] + [
        {"name": "Ann" if m.role == "user" else "Bob", "is_user": m.role == "user", "mes": m.content, "send_date": ""}
        for m in HISTORY
    ]
    st.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ws_store = ChatStore(cattery_home / "data" / "chats.sqlite3")
    try:
        chat_id = import_st_chat(ws_store, st)
        assert ws_store.chat(chat_id)["extra"]["author_note"] == {"text": NOTE, "depth": 0, "every": 2, "role": "user"}
        out = tmp_path / "out.jsonl"
        export_st_chat(ws_store, chat_id, out)
    finally:
        ws_store.close()
    meta = json.loads(out.read_text().splitlines()[0])["chat_metadata"]
    assert meta == {"note_prompt": NOTE, "note_interval": 2, "note_position": 1, "note_depth": 0, "note_role": 1}
    # `cattery prompt --history` on the file builds the prompt with the file's note (two user turns: due).
    r = run_cattery(
        "prompt",
        "--format",
        "chatml",
        "--card",
        "none",
        "--char",
        "Bob",
        "--user",
        "Ann",
        "--history",
        str(out),
        "--json",
        home=cattery_home,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["author_note"]["inserted"] and data["author_note"]["role"] == "user"
    assert data["text"].endswith(f"<|im_start|>user\n{SAID}<|im_end|>\n<|im_start|>assistant\n")


def test_a_cards_character_note_goes_in_with_the_authors_note(cattery_home: Path, tmp_path: Path) -> None:
    """SillyTavern's Character's Note (a card's `extensions.depth_prompt`): every turn, at its depth;
    at the same depth and role as the Author's Note, one message, the Author's Note first."""
    from tests.card_files import v2

    note = {"prompt": "{{char}} is shy.", "depth": 1, "role": "system"}
    card = tmp_path / "mira.json"
    card.write_text(json.dumps(v2("Mira", mes_example="", extensions={"depth_prompt": note})))
    history = tmp_path / "h.json"
    history.write_text(json.dumps([{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "hi"}]))
    args = ["prompt", "--format", "chatml", "--card", str(card), "--history", str(history), "--json"]
    r = run_cattery(*args, "--author-note", "Be {{char}}.", "--note-depth", "1", home=cattery_home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>system\nBe Mira.\nMira is shy.<|im_end|>\n" in out["text"]
    )
    assert out["insertions"][0]["kinds"] == ["author_note", "character_note"]
    alone = json.loads(run_cattery(*args, home=cattery_home).stdout)  # without a note: the card's own still goes in
    assert "<|im_start|>system\nMira is shy.<|im_end|>\n<|im_start|>user\nhi" in alone["text"]
    assert alone["author_note"] is None and alone["insertions"][0]["kinds"] == ["character_note"]
