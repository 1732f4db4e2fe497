"""Cards in the prompt: macros, examples, greetings, system prompt with {{original}}, post-history."""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path

from app.cards.card import Card, normalise_data
from app.cards.examples import parse_examples
from app.cards.macros import MacroContext, expand
from app.cards.prompting import Persona, card_prompt
from app.cards.read import read_card
from app.prompt.builder import PromptBuilder
from app.prompt.segments import Message, Speakers
from tests.card_files import v3
from tests.conftest import ROOT, run_cattery


def ctx(**kw) -> MacroContext:
    base = {
        "char": "Mira",
        "user": "Anon",
        "original": "Be kind.",
        "chat_seed": 1,
        "now": datetime(2026, 3, 5, 9, 7),
        "rng": random.Random(0),
    }
    base.update(kw)
    return MacroContext(**base)


def test_macros() -> None:
    c = ctx()
    assert expand("{{char}} meets {{USER}}; <BOT> and <user>.", c) == "Mira meets Anon; Mira and Anon."
    assert expand("{{original}} More.", c) == "Be kind. More."
    assert expand("a{{// a comment }}b{{newline}}c", c) == "ab\nc"
    assert expand("{{time}} {{date}}", c) == "09:07 March 5, 2026"
    assert expand("{{unknown}} {{setvar::x::1}}", c) == "{{unknown}} {{setvar::x::1}}"
    assert expand("{{random:red,green,blue}}", c) in ("red", "green", "blue")
    rolls = {int(expand("{{roll:d6}}", c)) for _ in range(200)}
    assert rolls == {1, 2, 3, 4, 5, 6}
    assert 3 <= int(expand("{{roll:3d6}}", c)) <= 18 and expand("{{roll:banana}}", c) == "{{roll:banana}}"
    # {{pick}} is stable within a chat, and may differ in another.
    text = "{{pick:a,b,c,d,e,f,g,h}}{{pick:a,b,c,d,e,f,g,h}}"
    assert expand(text, ctx()) == expand(text, ctx())
    assert len({expand(text, ctx(chat_seed=s)) for s in range(20)}) > 1


def test_examples_split_on_start_and_parse_speakers() -> None:
    text = "<START>\nAnon: hi\nMira: hello\nthere\n<start>\nMira: alone\n\n<START>\n"
    blocks = parse_examples(text, "Anon", "Mira")
    assert blocks == [
        [Message("user", "hi"), Message("assistant", "hello\nthere")],
        [Message("assistant", "alone")],
    ]


def card(**data) -> Card:
    return Card(normalise_data(v3(**data)["data"], "t"), "chara_card_v3")


def test_card_system_prompt_replaces_the_global_one_with_original() -> None:
    cp = card_prompt(
        card(system_prompt="{{original}} Also, you are {{char}}.", personality="sly", scenario="A wood."),
        global_system="Be kind.",
        persona=Persona("Anon", "Anon is a traveller."),
    )
    assert cp.system == (
        "Be kind. Also, you are Mimi.\nA fox spirit.\nMimi's personality: sly\nScenario: A wood.\nAnon is a traveller."
    )
    assert cp.char == "Mimi" and cp.user == "Anon"  # the nickname is {{char}}
    assert cp.greetings == ["Hello, Anon."]
    assert cp.examples == [[Message("user", "hi"), Message("assistant", "hi")]]
    no_own = card_prompt(card(system_prompt=""), global_system="Be kind.")
    assert no_own.system.startswith("Be kind.\nA fox spirit.")


def test_post_history_goes_right_before_the_reply() -> None:
    cp = card_prompt(card(post_history_instructions="Stay in character as {{char}}."), global_system="S")
    builder = PromptBuilder(
        "chatml",
        system=cp.system,
        speakers=Speakers(cp.user, cp.char),
        examples=cp.examples,
        post_history=cp.post_history,
    )
    built = builder.build([Message("assistant", cp.greetings[0]), Message("user", "Hi")])
    assert [s.kind for s in built.segments] == ["pinned", "example", "turn", "turn", "post", "generation"]
    assert built.text.endswith("<|im_start|>system\nStay in character as Mimi.<|im_end|>\n<|im_start|>assistant\n")


def test_bundled_characters() -> None:
    folder = ROOT / "assets" / "cards"
    mochi = read_card(folder / "mochi.json")
    assert "biomedical" in mochi.data["system_prompt"] and "Nyan" in mochi.data["system_prompt"]
    assert mochi.data["first_mes"].endswith("Nyan")
    narrator = read_card(folder / "narrator.json")
    assert "three numbered choices" in narrator.data["system_prompt"]
    assert narrator.data["first_mes"].count("\n1.") == 1 and "\n3." in narrator.data["first_mes"]


def test_chat_with_a_card_opens_with_its_greeting(cattery_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "mira.json"
    path.write_text(json.dumps(v3(post_history_instructions="Answer as {{char}}.")))
    r = run_cattery(
        "chat",
        "--plain",
        "--card",
        str(path),
        "--user",
        "Anon",
        "--temp",
        "0",
        "-n",
        "20",
        input="Who are you, {{char}}?\n/stats\n",
        home=cattery_home,
    )
    assert r.returncode == 0, r.stderr
    assert "character Mimi" in r.stderr and "Hello, Anon." in r.stderr  # not a script's stdout
    assert "messages: 3 (3 in the window)" in r.stdout
    # A new chat's default character is the bundled cat (without --new, the last chat goes on).
    default = run_cattery("chat", "--plain", "--new", "-n", "5", input="/quit\n", home=cattery_home)
    assert "character Mochi" in default.stderr


def test_prompt_command_with_a_card(cattery_home: Path) -> None:
    r = run_cattery("prompt", "--format", "metharme", "--card", "narrator", "--user", "Anon", home=cattery_home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("<|system|>Enter adventure mode. You are The Narrator")
    assert "<|user|>Anon: " not in r.stdout and r.stdout.endswith("<|model|>")
    bad = run_cattery("prompt", "--card", "nobody-at-all", home=cattery_home)
    assert bad.returncode != 0 and "no such card" in bad.stderr


def test_alternate_greetings_are_the_first_messages_swipes(cattery_home: Path) -> None:
    r = run_cattery(
        "chat",
        "--plain",
        "--card",
        "mochi",
        "-n",
        "5",
        "--temp",
        "0",
        input="/greeting\n/greeting 2\n/stats\nHi\n/greeting 1\n",
        home=cattery_home,
    )
    assert r.returncode == 0, r.stderr
    assert "1. *Mochi stretches" in r.stdout and "2. *Mochi looks up" in r.stdout
    assert "*Mochi looks up from a stack of physics papers" in r.stdout
    assert "messages: 1 (1 in the window)" in r.stdout
    assert "only be changed before your first message" in r.stderr
