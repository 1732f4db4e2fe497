"""SillyTavern instruct presets become format files; lint catches what ruins prompts quietly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.errors import CatteryError
from app.prompt.builder import PromptBuilder
from app.prompt.formats import load_format_file
from app.prompt.lint import lint
from app.prompt.segments import Message, Speakers
from app.prompt.st_import import convert_st_instruct, import_st_preset
from app.prompt.tokens import tokenizer_from
from tests.conftest import FIXTURES, run_cattery

PRESETS = FIXTURES / "st-presets" / "instruct"
HISTORY = [Message("user", "u1"), Message("assistant", "a1"), Message("user", "u2")]
SPEAKERS = Speakers(user="Anon", char="Cat")


def imported(tmp_path: Path, preset: str) -> PromptBuilder:
    target = import_st_preset(PRESETS / f"{preset}.json", tmp_path)
    fmt = load_format_file(target)
    builder = PromptBuilder("chatml", system="S", speakers=SPEAKERS)
    builder.fmt, builder.format_name = fmt, fmt.name
    return builder


def test_metharme_preset_renders_like_the_shipped_format(tmp_path: Path) -> None:
    st = imported(tmp_path, "Metharme").build(HISTORY).text
    ours = PromptBuilder("metharme", system="S", speakers=SPEAKERS).build(HISTORY).text
    # SillyTavern's Metharme writes names ("force"); with the names taken out the text is the same.
    assert st == "<|system|>S<|user|>Anon: u1<|model|>Cat: a1<|user|>Anon: u2<|model|>"
    assert st.replace("Anon: ", "").replace("Cat: ", "") == ours


def test_chatml_preset_wraps_and_writes_names(tmp_path: Path) -> None:
    builder = imported(tmp_path, "ChatML")
    assert builder.fmt.name == "chatml-st"  # the shipped chatml is not replaced
    assert builder.build(HISTORY).text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nAnon: u1<|im_end|>\n"
        "<|im_start|>assistant\nCat: a1<|im_end|>\n<|im_start|>user\nAnon: u2<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "<|im_end|>" in builder.fmt.stop


def test_llama3_preset_keeps_the_system_header(tmp_path: Path) -> None:
    text = imported(tmp_path, "Llama 3 Instruct").build(HISTORY).text
    assert text.startswith("<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_mistral_preset_uses_its_last_output_sequence(tmp_path: Path) -> None:
    builder = imported(tmp_path, "Mistral V1")
    assert builder.build(HISTORY).text.endswith(" [INST] Anon: u2 [/INST]")


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS.glob("*.json")))
def test_every_fixture_preset_imports(preset: str, tmp_path: Path) -> None:
    builder = imported(tmp_path, preset)
    assert builder.build(HISTORY).text


def test_not_a_preset_is_one_clear_line(tmp_path: Path, cattery_home: Path) -> None:
    with pytest.raises(CatteryError, match="not a SillyTavern instruct preset"):
        convert_st_instruct({"story_string": "x"}, "ctx.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"story_string": "x"}))
    r = run_cattery("formats", "import", str(bad), home=cattery_home)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1


def test_import_command_adds_a_usable_format(cattery_home: Path) -> None:
    r = run_cattery("formats", "import", str(PRESETS / "Alpaca.json"), "--name", "my alpaca", home=cattery_home)
    assert r.returncode == 0, r.stderr
    assert (cattery_home / "config" / "formats" / "my-alpaca.toml").is_file()
    assert "my-alpaca" in run_cattery("formats", home=cattery_home).stdout
    out = run_cattery("prompt", "--format", "my-alpaca", "--system", "S", "--card", "none", home=cattery_home)
    assert out.returncode == 0 and out.stdout.startswith("### Input:\nS")


def test_lint_on_the_bundled_model(engine) -> None:
    tok = tokenizer_from(engine)
    # SmolLM2 knows ChatML's markers as single tokens: nothing to say.
    assert lint(PromptBuilder("chatml", info=engine.info, tokenizer=tok, system="S"), tok) == []
    # Metharme's markers are not tokens of this model.
    warnings = lint(PromptBuilder("metharme", info=engine.info, tokenizer=tok, system="S"), tok)
    assert any("'<|user|>' is not a special token" in w for w in warnings)


def test_lint_finds_stop_strings_that_never_match(tmp_path: Path) -> None:
    path = tmp_path / "odd.toml"
    path.write_text('user_prefix = "Q: "\nassistant_prefix = "\\nA: "\nassistant_suffix = "\\n"\nstop = ["User:"]\n')
    builder = PromptBuilder("chatml", system="S")
    builder.fmt = load_format_file(path)
    assert any("none of its stop strings" in w for w in lint(builder, None))


def test_lint_command(cattery_home: Path) -> None:
    ok = run_cattery("formats", "lint", "chatml", "-m", "SmolLM2-135M-Instruct.Q4_1", home=cattery_home)
    assert ok.returncode == 0 and "no problems found" in ok.stdout
    bad = run_cattery("formats", "lint", "llama3", "-m", "SmolLM2-135M-Instruct.Q4_1", home=cattery_home)
    assert bad.returncode == 1 and "'<|eot_id|>' is not a special token" in bad.stdout
