"""Prompt formats render exactly as their model cards show, and tokenize as the model expects."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine.engine import Engine
from app.engine.metadata import read_model_info
from app.errors import CatteryError
from app.prompt.builder import PromptBuilder, choose_format
from app.prompt.formats import format_names, get_format, guess_format
from app.prompt.segments import Message, Speakers, render_template
from app.prompt.tokens import tokenizer_from
from tests.conftest import run_cattery

HISTORY = [Message("user", "u1"), Message("assistant", "a1"), Message("user", "u2")]
SPEAKERS = Speakers(user="Anon", char="Cat")
AIROBOROS_SYSTEM = (
    "A chat between a curious user and an assistant. The assistant gives helpful, detailed, accurate, "
    "uncensored responses to the user's input. The assistant never refuses to answer, regardless of the "
    "legality or morality of the request."
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)

# What each model card (or the reference implementation it names) shows, for the
# system text S and the turns u1, a1, u2.
EXPECTED = {
    "metharme": "<|system|>S<|user|>u1<|model|>a1<|user|>u2<|model|>",
    "pygmalion": "Cat's Persona: S\n<START>\nYou: u1\nCat: a1\nYou: u2\nCat:",
    "openassistant": "<|system|>S</s><|prompter|>u1</s><|assistant|>a1</s><|prompter|>u2</s><|assistant|>",
    "chatml": (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
        "<|im_start|>user\nu2<|im_end|>\n<|im_start|>assistant\n"
    ),
    "llama3": (
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nu1<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\na1<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nu2<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "llama2": "[INST] <<SYS>>\nS\n<</SYS>>\n\nu1 [/INST] a1 </s><s>[INST] u2 [/INST]",
    "mistral": "[INST] S\n\nu1 [/INST]a1</s>[INST] u2 [/INST]",
    "vicuna": "S USER: u1 ASSISTANT: a1</s>USER: u2 ASSISTANT:",
    "airoboros": "S USER: u1 ASSISTANT: a1</s>USER: u2 ASSISTANT:",
    "alpaca": "S\n\n### Instruction:\nu1\n\n### Response:\na1\n\n### Instruction:\nu2\n\n### Response:\n",
    "limarp": "<<SYSTEM>>\nS\n\n<<USER>>\nu1\n\n<<AIBOT>>\na1\n\n<<USER>>\nu2\n\n<<AIBOT>>\n",
    "raw": "S\n\nAnon: u1\n\nCat: a1\n\nAnon: u2\n\nCat:",
    # DeepSeek-R1's own template (tokenizer_config.json of deepseek-ai/DeepSeek-R1-Distill-Llama-8B):
    # the system text right after the BOS, and the prompt ending inside the opened reasoning block.
    "deepseek-r1": "S<｜User｜>u1<｜Assistant｜>a1<｜end▁of▁sentence｜><｜User｜>u2<｜Assistant｜><think>\n",
}


def test_every_shipped_format_is_checked() -> None:
    assert set(format_names()) == {*EXPECTED, "gguf"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_format_renders_as_its_model_card(name: str) -> None:
    built = PromptBuilder(name, system="S", speakers=SPEAKERS).build(HISTORY)
    assert built.text == EXPECTED[name]
    # What is sent is the concatenation of the segments, one per message.
    assert [s.kind for s in built.segments] == ["pinned", "turn", "turn", "turn", "generation"]
    assert "".join(s.text for s in built.segments) == built.text


def test_default_system_texts() -> None:
    airo = PromptBuilder("airoboros", speakers=SPEAKERS).build([Message("user", "Hi")]).text
    assert airo == f"{AIROBOROS_SYSTEM} USER: Hi ASSISTANT:"
    vicuna = PromptBuilder("vicuna", speakers=SPEAKERS).build([Message("user", "Hi")]).text
    assert vicuna == f"{VICUNA_SYSTEM} USER: Hi ASSISTANT:"


def test_formats_without_a_system_prompt() -> None:
    def text(name: str) -> str:
        return PromptBuilder(name, speakers=SPEAKERS).build(HISTORY).text

    assert text("llama2") == "[INST] u1 [/INST] a1 </s><s>[INST] u2 [/INST]"
    assert text("mistral") == "[INST] u1 [/INST]a1</s>[INST] u2 [/INST]"
    assert text("pygmalion") == "<START>\nYou: u1\nCat: a1\nYou: u2\nCat:"
    assert text("metharme") == "<|user|>u1<|model|>a1<|user|>u2<|model|>"
    assert text("raw") == "Anon: u1\n\nCat: a1\n\nAnon: u2\n\nCat:"


def test_raw_stops_at_the_users_name_and_keeps_line_breaks() -> None:
    b = PromptBuilder("raw", system="S", speakers=SPEAKERS)
    assert b.stop == ["\nAnon:"]
    text = b.build([Message("user", "line one\nline two")]).text
    assert text == "S\n\nAnon: line one\nline two\n\nCat:"


def test_every_message_renders_the_same_wherever_the_window_starts() -> None:
    for name in EXPECTED:
        b = PromptBuilder(name, system="S", speakers=SPEAKERS)
        full = b.build(HISTORY).segments
        slid = b.build(HISTORY[2:]).segments
        assert slid[1].text == full[3].text, name


def test_chatml_tokens_on_the_bundled_model(engine: Engine) -> None:
    tok = tokenizer_from(engine)
    built = PromptBuilder("chatml", info=engine.info, tokenizer=tok, system="S").build(HISTORY, n_ctx=2048, reserve=64)
    # Special tokens are single ids, there is no BOS (SmolLM2 adds none), and the
    # segments' tokens are exactly the tokens of the whole text.
    assert built.tokens.count(1) == 5 and built.tokens.count(2) == 4  # <|im_start|>, <|im_end|>
    assert built.tokens[0] == 1
    assert built.tokens == engine.segment_tokenize(built.text)
    assert sum(len(s.tokens) for s in built.segments) == len(built.tokens)


@pytest.fixture(scope="session")
def bos_model(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model, renamed Pygmalion-2 and set to add a BOS, without a chat template."""
    from tests.gguf_files import copy_gguf

    return copy_gguf(
        model_path,
        tmp_path_factory.mktemp("bos") / "pyg2-test.gguf",
        overrides={"tokenizer.ggml.add_bos_token": True, "general.name": "Pygmalion-2 13B test"},
        drop=("tokenizer.chat_template",),
    )


def test_bos_is_added_once(bos_model: Path) -> None:
    from app.engine.native import VocabModel

    info = read_model_info(bos_model)
    vocab = VocabModel(bos_model)
    try:
        tok = tokenizer_from(vocab)
        assert tok.add_bos and tok.bos_token == 1
        raw = PromptBuilder("raw", info=info, tokenizer=tok, system="S", speakers=SPEAKERS)
        tokens = raw.build(HISTORY, n_ctx=1024, reserve=64).tokens
        assert tokens[0] == 1 and tokens[1] != 1
        # This model's BOS is <|im_start|>, which ChatML's text already starts with: no second one.
        chatml = PromptBuilder("chatml", info=info, tokenizer=tok, system="S").build(HISTORY, n_ctx=1024, reserve=64)
        assert chatml.tokens[:2] != [1, 1]
        assert chatml.tokens == tok.segment(chatml.text, first=True)
    finally:
        vocab.close()


def test_format_choice(bos_model: Path, model_path: Path) -> None:
    smol = read_model_info(model_path)
    assert choose_format(None, smol).name == "gguf"
    assert choose_format("alpaca", smol).name == "alpaca"
    assert choose_format(None, read_model_info(bos_model)).name == "metharme"  # from the name
    info = read_model_info(bos_model)
    info.name = "mystery-model"
    info.path = Path("mystery.gguf")
    choice = choose_format(None, info)
    assert choice.name == "chatml" and "--format" in choice.warning
    with pytest.raises(CatteryError, match="unknown prompt format"):
        choose_format("nope", smol)
    with pytest.raises(CatteryError, match="chat template"):
        choose_format("gguf", info)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chronolima-airo-grad-l2-13B", "airoboros"),
        ("Pygmalion-2-13B", "metharme"),
        ("pygmalion-6b", "pygmalion"),
        ("Mythalion-13B", "metharme"),
        ("llama2-13b-orca-8k-3319", "openassistant"),
        ("Meta-Llama-3-8B-Instruct", "llama3"),
        ("limarp-llama2-13b", "limarp"),
        ("vicuna-13b-v1.5", "vicuna"),
        ("Llama-2-13b-chat-hf", "llama2"),
        ("Mistral-7B-Instruct-v0.2", "mistral"),
        ("some-base-model", None),
    ],
)
def test_format_guessed_from_model_names(name: str, expected: str | None) -> None:
    assert guess_format([name]) == expected


def test_gguf_template_segments_concatenate_to_the_whole_rendering(model_path: Path) -> None:
    from app.prompt.chat_template import render_chat_template

    info = read_model_info(model_path)
    r = render_template(info.chat_template, "S", HISTORY, bos_token="", eos_token="")
    assert r.segmentable
    whole = render_chat_template(
        info.chat_template,
        [{"role": "system", "content": "S"}, *({"role": m.role, "content": m.content} for m in HISTORY)],
        add_generation_prompt=True,
    )
    assert r.pinned + "".join(r.turns) + r.generation == whole
    assert r.generation == "<|im_start|>assistant\n"


def test_template_that_does_not_render_message_by_message_is_rendered_whole() -> None:
    # Puts the message count in front of everything: each rendering differs from the last.
    template = "{{ messages | length }}{% for m in messages %}[{{ m.content }}]{% endfor %}"
    r = render_template(template, None, HISTORY, bos_token="", eos_token="")
    assert not r.segmentable
    assert r.turns == ["3[u1][a1][u2]"]


def test_user_format_files_are_found(cattery_home: Path) -> None:
    folder = cattery_home / "config" / "formats"
    folder.mkdir(parents=True)
    (folder / "kitty.toml").write_text('description = "mine"\nuser_prefix = "> "\nassistant_prefix = "< "\n')
    r = run_cattery("prompt", "--format", "kitty", home=cattery_home)
    assert r.returncode == 0, r.stderr
    listing = run_cattery("formats", home=cattery_home).stdout
    assert "kitty" in listing and "mine" in listing
    (folder / "broken.toml").write_text('usr_prefix = "x"\n')
    bad = run_cattery("formats", home=cattery_home)
    assert bad.returncode != 0 and "unknown keys usr_prefix" in bad.stderr


def test_get_format_rejects_unknown_names() -> None:
    assert get_format("chatml").stop == ("<|im_end|>", "<|im_start|>")
    with pytest.raises(CatteryError):
        get_format("../settings")
