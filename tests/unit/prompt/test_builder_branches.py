"""Every branch of the prompt builder places every text once, where it belongs (issue 15, item 3).

The builder renders a card's pieces through two branches: a data format (assets/formats/)
and a GGUF chat template. Each text a chat can bring — lore at the card or at the end,
post-history instructions, example dialogue — must appear exactly once, in its place, in
every format, with or without the others. A chat builds its prompt this way: a card's
`card_prompt`, a real lorebook in a `LoreSession`, and the `ChatExtras` a chat passes as
the builder's dynamic part.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cards.card import Card, normalise_data
from app.cards.lorebook import Lorebook, LoreEntry
from app.cards.prompting import LoreSession, card_prompt
from app.engine.engine import Engine
from app.engine.metadata import ModelInfo, read_model_info
from app.prompt.builder import BuiltPrompt, PromptBuilder
from app.prompt.formats import GGUF, format_names
from app.prompt.segments import Message, Speakers
from app.session.lore import ChatExtras
from tests.card_files import v3

LORE = "LORE-TEXT the moon is cheese"
POST = "POST-TEXT stay in character"
DESCRIPTION = "DESC-TEXT a fox spirit"
EXAMPLE_Q = "EXAMPLE-Q what is it"
EXAMPLE_A = "EXAMPLE-A a fox"
HISTORY = [Message("user", "TURN-1 hello"), Message("assistant", "TURN-2 hi"), Message("user", "TURN-3 bye")]
FORMATS = [*sorted(n for n in format_names() if n != GGUF), GGUF]


@pytest.fixture(scope="module")
def bundled_info(model_path: Path) -> ModelInfo:
    info = read_model_info(model_path)
    assert info.chat_template, "the bundled model carries a chat template"
    return info


def build(fmt: str, info: ModelInfo, placement: str, post: bool, examples: bool) -> BuiltPrompt:
    data = v3(
        description=DESCRIPTION,
        personality="",
        scenario="",
        mes_example=f"<START>\n{{{{user}}}}: {EXAMPLE_Q}\n{{{{char}}}}: {EXAMPLE_A}" if examples else "",
        post_history_instructions=POST if post else "",
    )
    cp = card_prompt(Card(normalise_data(data["data"], "t"), "chara_card_v3"), global_system="SYSTEM-TEXT")
    book = Lorebook("world", [LoreEntry("1", ["unused key"], LORE, constant=True)])
    extras = ChatExtras(cp, LoreSession(cp, [book], placement), None)
    builder = PromptBuilder(
        fmt,
        info=info if fmt == GGUF else None,
        system=cp.system,
        speakers=Speakers(cp.user, cp.char),
        examples=cp.examples,
        post_history=cp.post_history,
        dynamic=extras,
    )
    return builder.build(HISTORY)


def only_in(built: BuiltPrompt, text: str) -> str:
    """The kind of the one segment holding `text`, which the whole prompt holds exactly once."""
    assert built.text.count(text) == 1, f"{text!r} appears {built.text.count(text)} times in {built.text!r}"
    kinds = [s.kind for s in built.segments if text in s.text]
    assert len(kinds) == 1, f"{text!r} is split across segments"
    return kinds[0]


@pytest.mark.parametrize("examples", [False, True], ids=["no-examples", "examples"])
@pytest.mark.parametrize("post", [False, True], ids=["no-post", "post"])
@pytest.mark.parametrize("placement", ["card", "end"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_text_once_in_its_place(
    fmt: str, placement: str, post: bool, examples: bool, bundled_info: ModelInfo
) -> None:
    built = build(fmt, bundled_info, placement, post, examples)
    text = built.text
    assert "".join(s.text for s in built.segments) == text
    assert [s.kind for s in built.segments][-1] == "generation"
    first_turn, last_turn = text.index("TURN-1"), text.index("TURN-3")
    for turn in ("TURN-1", "TURN-2", "TURN-3"):
        assert only_in(built, turn) == "turn"
    assert only_in(built, DESCRIPTION) == "pinned" and text.index(DESCRIPTION) < first_turn

    lore_kind = only_in(built, LORE)
    if placement == "card":
        assert lore_kind == "pinned" and text.index(LORE) < first_turn
    else:  # right before the reply: after the last turn
        assert lore_kind == "post" and text.index(LORE) > last_turn

    if post:
        assert only_in(built, POST) == "post" and text.index(POST) > last_turn
        if placement == "end":  # the card's instructions come last, nearest the reply
            assert text.index(LORE) < text.index(POST)
    else:
        assert POST not in text

    if examples:
        assert only_in(built, EXAMPLE_Q) == only_in(built, EXAMPLE_A) == "example"
        assert text.index(DESCRIPTION) < text.index(EXAMPLE_Q) < text.index(EXAMPLE_A) < first_turn
    else:
        assert EXAMPLE_Q not in text and EXAMPLE_A not in text


# A template with no system role at all, that lets the character speak first (Mistral-like).
NO_SYSTEM = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


@pytest.mark.parametrize(
    "history",
    [HISTORY, HISTORY[1:2]],
    ids=["chat", "greeting-alone"],
)
def test_post_history_with_a_template_that_takes_no_system_message(
    history: list[Message], bundled_info: ModelInfo
) -> None:
    """The instructions close the last user message, or, with none (the card's greeting alone), are
    a user message of their own right before the reply; the template's own text either way."""
    from dataclasses import replace

    from app.prompt.chat_template import render_chat_template

    info = replace(bundled_info, chat_template=NO_SYSTEM)
    built = PromptBuilder("gguf", info=info, system="SYSTEM-TEXT", post_history=POST).build(history)
    assert built.text.count(POST) == 1 and built.text.count("SYSTEM-TEXT") == 1
    assert "".join(s.text for s in built.segments) == built.text
    sent = [{"role": m.role, "content": m.content} for m in history]
    if len(history) > 1:
        sent[0]["content"] = f"SYSTEM-TEXT\n\n{sent[0]['content']}"
        sent[-1]["content"] = f"{sent[-1]['content']}\n\n{POST}"
        assert built.segments[-2].kind == "turn" and POST in built.segments[-2].text
    else:
        sent = [{"role": "user", "content": "SYSTEM-TEXT"}, *sent, {"role": "user", "content": POST}]
        assert built.segments[-2].kind == "post" and POST in built.segments[-2].text
    bos, eos = info.bos_token or "", info.eos_token or ""
    assert built.text == render_chat_template(NO_SYSTEM, sent, bos_token=bos, eos_token=eos)


NUMBERED = "{% for m in messages %}{{ loop.index }}. {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def test_a_template_renders_again_without_the_examples_it_drops(engine: Engine, bundled_info: ModelInfo) -> None:
    """When the window drops the example dialogue, the prompt is the template's text for the
    conversation without it (here every later message is numbered anew), not the text with
    the examples cut out."""
    from dataclasses import replace

    from app.prompt.chat_template import render_chat_template
    from app.prompt.tokens import tokenizer_from

    info = replace(bundled_info, chat_template=NUMBERED)
    examples = [[Message("user", "EXAMPLE-Q " * 40), Message("assistant", "EXAMPLE-A " * 40)]]
    builder = PromptBuilder("gguf", info=info, tokenizer=tokenizer_from(engine), system="S", examples=examples)
    full = builder.build(HISTORY, n_ctx=4096)
    assert full.examples_kept and full.text.startswith("1. system: S\n2. user: EXAMPLE-Q")
    room = sum(len(s.tokens) for s in full.segments if s.kind != "example") + 8
    built = builder.build(HISTORY, n_ctx=room)
    assert not built.examples_kept and built.kept == [0, 1, 2]
    messages = [{"role": "system", "content": "S"}, *({"role": m.role, "content": m.content} for m in HISTORY)]
    assert (
        built.text
        == render_chat_template(NUMBERED, messages)
        == ("1. system: S\n2. user: TURN-1 hello\n3. assistant: TURN-2 hi\n4. user: TURN-3 bye\n")
    )
