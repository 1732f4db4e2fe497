"""System-prompt presets: the bundled ones, SillyTavern's own preset files imported, which one a chat
starts from (chat, character, settings), {{original}} in a card's own prompt, and hostile files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app.errors import CatteryError
from app.prompt.presets import MAX_PRESET_BYTES, get_preset, load_presets, preset_names, user_preset_dirs
from app.prompt.st_sysprompt import MAX_SOURCE, convert_st_sysprompt, import_st_sysprompt
from app.session.system_prompt import (
    CHAT_KEY,
    STATE_PREFIX,
    set_character_preset,
    set_chat_preset,
    set_default_preset,
)
from app.session.workspace import Workspace
from app.untrusted import parse_toml
from tests.card_files import v3
from tests.conftest import FIXTURES, run_cattery

ST = FIXTURES / "st-sysprompt"
ST_FILES = sorted(ST.glob("*.json"))
PLAIN = "This is a conversation between {{user}} and {{char}}. Write {{char}}'s next reply, in {{char}}'s own voice."


def one_line_error(r) -> str:
    """The command failed as a user mistake should: non-zero, one line on stderr, no traceback."""
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def card_file(tmp_path: Path, **data) -> Path:
    path = tmp_path / "mira.json"
    path.write_text(json.dumps(v3(**data)))
    return path


# -- the bundled presets ----------------------------------------------------------------------------


def test_bundled_presets_load_with_their_sources(cattery_home: Path) -> None:
    presets, problems = load_presets()
    assert problems == []
    orca = [f"orca-{i:02d}" for i in range(1, 17)]
    assert {*orca, "narrator", "plain"} <= set(presets)
    assert all(p.bundled and p.description and p.source for p in presets.values())
    # The orca-8k card's sixteen system messages, word for word: the first is no system message at all.
    assert presets["orca-01"].text == ""
    assert presets["orca-03"].text == (
        "You are an AI assistant. You will be given a task. You must generate a detailed and long answer."
    )
    assert presets["orca-16"].text == "You are an AI assistant that helps people find information."
    assert presets["orca-15"].text.splitlines()[1:] == [
        "Part #: a key part of the definition.",
        "Usage: Sample response that meets the criteria from the key part."
        " Explain why you think it meets the criteria.",
    ]
    assert len({presets[n].text for n in orca}) == 16
    assert all("huggingface.co/OpenAssistant/llama2-13b-orca-8k-3319" in presets[n].source for n in orca)
    # The plain one follows Cat v0.5's advice: no helpful-assistant persona.
    assert presets["plain"].text == PLAIN and "assistant" not in presets["plain"].text.lower()
    assert "Heralax/Cat-0.5" in presets["plain"].source
    assert "{{user}}" in presets["narrator"].text
    assert preset_names() == sorted(presets)


def test_bundled_preset_in_a_chat_without_a_card(ws: Workspace) -> None:
    assert set_default_preset(ws, "plain") is None
    recipe = ws.recipe(None, user="Ann", char="Bob")
    assert recipe.system == "This is a conversation between Ann and Bob. Write Bob's next reply, in Bob's own voice."
    assert (recipe.system_preset, recipe.system_scope) == ("plain", "settings")
    assert set_default_preset(ws, "orca-01") is None  # the empty system message: no system prompt at all
    assert ws.recipe(None).system is None


# -- SillyTavern's own preset files ------------------------------------------------------------------


@pytest.mark.parametrize("path", ST_FILES, ids=lambda p: p.stem)
def test_every_sillytavern_preset_imports_as_written(path: Path, cattery_home: Path) -> None:
    data = json.loads(path.read_text())
    target = import_st_sysprompt(path, user_preset_dirs()[0])
    assert target.parent == cattery_home / "config" / "presets"
    preset = get_preset(target.stem)
    assert preset.text == data["content"]  # macros kept as written: they are expanded per chat
    assert not preset.bundled and data["name"] in preset.description and preset.source == path.name


def test_imported_preset_round_trips_into_the_prompt(ws: Workspace, cattery_home: Path) -> None:
    target = import_st_sysprompt(ST / "Neutral - Chat.json", user_preset_dirs()[0])
    assert target.name == "neutral-chat.toml"
    assert set_default_preset(ws, "neutral-chat") is None
    wanted = "Write Bob's next reply in a fictional chat between Bob and Ann."
    assert ws.recipe(None, user="Ann", char="Bob").system == wanted
    # A new process reads the settings and the imported file and prints the same prompt.
    r = run_cattery(
        "prompt", "--format", "chatml", "--card", "none", "--user", "Ann", "--char", "Bob", home=cattery_home
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"<|im_start|>system\n{wanted}<|im_end|>\n")
    # --system still wins over every choice.
    r = run_cattery("prompt", "--format", "chatml", "--card", "none", "--system", "SYS", home=cattery_home)
    assert r.stdout.startswith("<|im_start|>system\nSYS<|im_end|>\n")


def test_import_command_list_and_show(cattery_home: Path) -> None:
    r = run_cattery("presets", "import", str(ST / "Actor.json"), "--name", "my actor", home=cattery_home)
    assert r.returncode == 0, r.stderr
    assert (cattery_home / "config" / "presets" / "my-actor.toml").is_file()
    listed = json.loads(run_cattery("presets", "--json", home=cattery_home).stdout)
    assert listed["my-actor"]["bundled"] is False and listed["narrator"]["bundled"] is True
    shown = json.loads(run_cattery("presets", "show", "my-actor", "--json", home=cattery_home).stdout)
    assert shown["text"] == json.loads((ST / "Actor.json").read_text())["content"]
    # Imported again without --name: the first is not replaced.
    again = run_cattery("presets", "import", str(ST / "Actor.json"), home=cattery_home)
    assert again.returncode == 0 and "actor" in again.stdout
    twice = run_cattery("presets", "import", str(ST / "Actor.json"), home=cattery_home)
    assert "actor-st" in twice.stdout
    text = run_cattery("presets", home=cattery_home).stdout
    assert "my-actor" in text and "(yours)" in text and "orca-16" in text
    assert "did you mean my-actor" in one_line_error(run_cattery("presets", "show", "my-actr", home=cattery_home))


def test_post_history_from_a_newer_preset(ws: Workspace, tmp_path: Path) -> None:
    """SillyTavern's newer presets carry post-history instructions; a card's own wins, {{original}} in it is this."""
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"name": "Newer", "content": "Be {{char}}.", "post_history": "Stay brief, {{user}}."}))
    import_st_sysprompt(newer, user_preset_dirs()[0])
    assert set_default_preset(ws, "newer") is None
    plain = ws.recipe(None, user="Ann", char="Bob")
    assert (plain.system, plain.post_history) == ("Be Bob.", "Stay brief, Ann.")
    built = plain.builder("chatml", None, None).build([])
    assert built.text.endswith("<|im_start|>system\nStay brief, Ann.<|im_end|>\n<|im_start|>assistant\n")
    _, card = ws.resolve_character(str(card_file(tmp_path, post_history_instructions="{{original}} As {{char}}.")))
    assert ws.recipe(card, user="Ann").card.post_history == "Stay brief, Ann. As Mimi."


# -- the card's own system prompt and {{original}} ----------------------------------------------------


def test_original_in_a_cards_own_prompt_is_the_preset(ws: Workspace, tmp_path: Path) -> None:
    assert set_default_preset(ws, "plain") is None
    own = "{{original}} You are {{char}}. {{original}}"  # SillyTavern expands {{original}} once
    _, card = ws.resolve_character(str(card_file(tmp_path, system_prompt=own)))
    system = ws.recipe(card, user="Ann").system
    assert system.startswith(
        "This is a conversation between Ann and Mimi. Write Mimi's next reply, in Mimi's own voice. You are Mimi.\n"
    )
    assert system.count("This is a conversation") == 1
    # A card without its own system prompt starts from the preset itself.
    _, bare = ws.resolve_character(str(card_file(tmp_path, system_prompt="")))
    assert ws.recipe(bare, user="Ann").system.startswith("This is a conversation between Ann and Mimi.")


def test_the_card_wins_unless_the_user_says_otherwise(ws: Workspace, tmp_path: Path) -> None:
    assert set_default_preset(ws, "narrator") is None
    _, card = ws.resolve_character(str(card_file(tmp_path, system_prompt="Only {{char}} speaks here.")))
    assert ws.recipe(card).system.startswith("Only Mimi speaks here.\n")
    ws.settings.set("chat", "prefer_card_prompt", False)
    system = ws.recipe(card, user="Ann").system
    assert system.startswith("You are the narrator of an interactive story shared with Ann.")
    assert "Only Mimi speaks here." not in system


def test_the_switch_is_saved_and_read_back(cattery_home: Path) -> None:
    r = run_cattery("presets", "use", "narrator", home=cattery_home)
    assert r.returncode == 0, r.stderr
    settings = parse_toml((cattery_home / "config" / "settings.toml").read_text(), "settings.toml")
    assert settings["chat"]["system_preset"] == "narrator"
    assert Workspace().settings.chat.prefer_card_prompt is True  # the default: the card's own wins


# -- chosen per chat, per character, in the settings ----------------------------------------------------


def test_chat_beats_character_beats_settings(ws: Workspace) -> None:
    card_ref, card = ws.resolve_character("mochi")
    assert card_ref is not None and card is not None
    chat_id = ws.store.create_chat("with Mochi", card_ref, card.display_name, "User")
    other = ws.store.create_chat("no character")
    ws.settings.set("chat", "prefer_card_prompt", False)  # Mochi has her own; the choice shows in the text

    def chosen(ref: str | None, cid: int, c=card) -> tuple[str | None, str, str]:
        r = ws.recipe(c if ref else None, card_ref=ref, chat_id=cid)
        return r.system_preset, r.system_scope, r.system or ""

    assert chosen(card_ref, chat_id)[:2] == (None, "settings")  # nothing chosen: [chat] system as before
    assert set_default_preset(ws, "plain") is None
    set_character_preset(ws, card_ref, "narrator")
    set_chat_preset(ws, chat_id, "orca-16")
    assert ws.store.chat(chat_id)["extra"][CHAT_KEY] == "orca-16"
    assert ws.store.get_state(STATE_PREFIX + card_ref) == "narrator"
    preset, scope, text = chosen(card_ref, chat_id)
    assert (preset, scope) == ("orca-16", "chat") and text.startswith("You are an AI assistant that helps people")
    set_chat_preset(ws, chat_id, "")
    preset, scope, text = chosen(card_ref, chat_id)
    assert (preset, scope) == ("narrator", "character") and text.startswith("You are the narrator")
    assert chosen(None, other)[:2] == ("plain", "settings")
    set_character_preset(ws, card_ref, "")
    assert chosen(card_ref, chat_id)[:2] == ("plain", "settings")
    # The command line's --system wins over every choice.
    forced = ws.recipe(None, system="SYS", chat_id=other)
    assert (forced.system, forced.system_scope) == ("SYS", "command line")


def test_use_command_per_chat_and_character(cattery_home: Path) -> None:
    ws = Workspace()
    card_ref, _ = ws.resolve_character("mochi")
    chat_id = ws.store.create_chat("with Mochi", card_ref)
    ws.close()
    assert run_cattery("presets", "use", "orca-05", "--chat", str(chat_id), home=cattery_home).returncode == 0
    assert run_cattery("presets", "use", "narrator", "--card", "mochi", home=cattery_home).returncode == 0
    ws = Workspace()
    try:
        assert ws.store.chat(chat_id)["extra"][CHAT_KEY] == "orca-05"
        assert ws.store.get_state(STATE_PREFIX + card_ref) == "narrator"
    finally:
        ws.close()
    assert run_cattery("presets", "use", "--clear", "--chat", str(chat_id), home=cattery_home).returncode == 0
    assert "no chat with that id" in one_line_error(
        run_cattery("presets", "use", "plain", "--chat", "999", home=cattery_home)
    )
    assert "unknown system-prompt preset" in one_line_error(
        run_cattery("presets", "use", "nope", "--card", "mochi", home=cattery_home)
    )


def test_a_preset_that_is_gone_falls_back_with_a_warning(ws: Workspace, cattery_home: Path) -> None:
    target = import_st_sysprompt(ST / "Actor.json", user_preset_dirs()[0])
    chat_id = ws.store.create_chat("t")
    set_chat_preset(ws, chat_id, "actor")
    assert set_default_preset(ws, "plain") is None
    target.unlink()
    recipe = ws.recipe(None, chat_id=chat_id)
    assert recipe.system_preset == "plain"
    assert any("chosen for this chat is skipped" in w and "actor" in w for w in recipe.lore.warnings)
    # A name that is not one Cattery wrote (a tampered database) is no choice at all.
    ws.store.update_chat_extra(chat_id, **{CHAT_KEY: ["../../etc/passwd"]})
    assert ws.recipe(None, chat_id=chat_id).system_preset == "plain"


# -- hostile files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ([1, 2, 3], "not a SillyTavern system-prompt preset"),
        ({"name": "x"}, "no content"),
        ({"content": 5}, "content must be a string"),
        ({"content": "x", "name": ["a"]}, "name must be a string"),
        ({"content": "x", "post_history": {"a": 1}}, "post_history must be a string"),
        ({"content": "x" * 300_000}, "characters long"),
        ({"content": "a\x00b"}, "NUL"),
        ({"input_sequence": "<|user|>", "output_sequence": "<|model|>"}, "cattery formats import"),
    ],
)
def test_not_a_preset_is_one_line(data, said: str) -> None:
    with pytest.raises(CatteryError, match=said):
        convert_st_sysprompt(data, "x.json")


def test_hostile_files_at_the_command_line(cattery_home: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b'{"content": "' + b"a" * MAX_SOURCE + b'"}')
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 5000 + "]" * 5000)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"name": "Wrong", "content": ["not", "text"]}))
    instruct = FIXTURES / "st-presets" / "instruct" / "ChatML.json"
    for path, said in [
        (big, "more than"),
        (deep, "nested"),
        (binary, "not"),
        (wrong, "content must be a string"),
        (instruct, "formats import"),
        (tmp_path / "missing.json", "no such file"),
        (tmp_path, "a folder"),
    ]:
        line = one_line_error(run_cattery("presets", "import", str(path), home=cattery_home))
        assert said in line, line
    assert not (cattery_home / "config" / "presets").exists() or not list(
        (cattery_home / "config" / "presets").iterdir()
    )


def test_names_never_become_paths_outside_the_folder(cattery_home: Path, tmp_path: Path) -> None:
    folder = user_preset_dirs()[0]
    for name, file in [
        ("../../evil", "evil.toml"),
        ("CON", "con-preset.toml"),
        ("", "tricky.toml"),
        ("/etc/x", "etc-x.toml"),
    ]:
        src = tmp_path / "tricky.json"
        src.write_text(json.dumps({"name": name, "content": "x"}))
        assert import_st_sysprompt(src, folder) == folder / file
    assert import_st_sysprompt(ST / "Blank.json", folder, name="../../../up") == folder / "up.toml"
    assert sorted(p.parent for p in cattery_home.rglob("*.toml")) == [folder] * 5
    # A name from outside (the settings, a chat) is only looked up, never opened as a path.
    with pytest.raises(CatteryError, match="unknown system-prompt preset"):
        get_preset("../presets/evil")


def test_broken_user_files_are_skipped_not_fatal(cattery_home: Path) -> None:
    folder = user_preset_dirs()[0]
    folder.mkdir(parents=True)
    (folder / "broken.toml").write_text('text = "unclosed\n')
    (folder / "typed.toml").write_text("text = 5\n")
    (folder / "extra.toml").write_text('text = "x"\nrun = "rm -rf /"\n')
    (folder / "empty.toml").write_text('description = "no text"\n')
    (folder / "huge.toml").write_bytes(b'text = "' + b"a" * MAX_PRESET_BYTES + b'"\n')
    os.mkfifo(folder / "fifo.toml")  # reading it would wait for a writer forever
    (folder / "good.toml").write_text('text = "Fine."\n')
    presets, problems = load_presets()
    assert presets["good"].text == "Fine." and "narrator" in presets
    assert len(problems) == 6 and all(p.startswith(str(folder)) for p in problems)
    r = run_cattery("presets", home=cattery_home)
    assert r.returncode == 0 and "good" in r.stdout
    assert len([line for line in r.stderr.splitlines() if line.startswith("warning: skipped")]) == 6
    assert "not valid TOML" in one_line_error(run_cattery("presets", "show", "broken", home=cattery_home))
    assert "unknown keys run" in one_line_error(run_cattery("presets", "show", "extra", home=cattery_home))


def test_settings_name_a_preset_or_nothing(cattery_home: Path) -> None:
    config = cattery_home / "config"
    config.mkdir(parents=True)
    (config / "settings.toml").write_text('[chat]\nsystem_preset = "../../etc/passwd"\nprefer_card_prompt = "yes"\n')
    ws = Workspace()
    try:
        assert ws.settings.chat.system_preset == "" and ws.settings.chat.prefer_card_prompt is True
        warned = " ".join(ws.settings.warnings)
        assert "system_preset" in warned and "prefer_card_prompt" in warned
    finally:
        ws.close()
