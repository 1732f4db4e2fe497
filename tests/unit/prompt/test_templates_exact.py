"""Every chat template llama.cpp ships renders exactly as Hugging Face renders it (issue 15, item 1).

The `gguf` format's text must be the template's own text for the whole conversation with a
generation prompt, whatever Cattery does to cut it into per-message segments (the sliding
window and the KV cache reuse need them). The templates are llama.cpp's
`models/templates/*.jinja` (tests/fixtures/templates/, origin there); the yardstick is
tests/template_reference.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.engine.metadata import ModelInfo, read_model_info
from app.prompt.segments import Message, render_template
from tests.conftest import run_cattery
from tests.template_reference import (
    SYSTEM,
    TEMPLATES,
    TemplateReport,
    check_template,
    conversation,
    reference,
    template_files,
)

# What the templates do with a plain chat, as the reference renders them. Listed here so that a
# change in what Cattery makes of a template shows as a failure, not as a quiet difference.
REFUSES_A_PLAIN_CHAT = {  # they need tools (or `functions`) even for a chat without them
    "CohereForAI-c4ai-command-r-plus-tool_use",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
    "fireworks-ai-llama-3-firefunction-v2",
}
REFUSES_A_SYSTEM_ROLE = {"google-gemma-2-2b-it"}
NOT_SEGMENTABLE = {  # a message written differently once others follow it, or by the last message's place
    "NVIDIA-Nemotron-Nano-v2",  # <think> in an assistant turn only while it is the last
    "Qwen-Qwen3-0.6B",  # likewise, from the last user message's index
    "Qwen3.5-4B",
    "StepFun3.5-Flash",
    "openai-gpt-oss-120b",
    "mistralai-Mistral-Nemo-Instruct-2407",  # the system prompt goes into the last user message
}
PHI = TEMPLATES / "microsoft-Phi-3.5-mini-instruct.jinja"


@pytest.fixture(scope="module")
def bundled_info(model_path: Path) -> ModelInfo:
    return read_model_info(model_path)


@pytest.fixture(scope="module")
def reports(bundled_info: ModelInfo) -> dict[str, TemplateReport]:
    """Every template checked once (a few seconds for all of them)."""
    return {path.stem: check_template(path, bundled_info) for path in template_files()}


def test_every_template_llama_cpp_ships_is_here() -> None:
    names = [p.stem for p in template_files()]
    assert len(names) == 70
    assert (TEMPLATES / "LICENSE-llama.cpp").read_text().startswith("MIT License")
    assert "llama-cpp-python 0.3.36" in (TEMPLATES / "README.md").read_text()
    assert {*REFUSES_A_PLAIN_CHAT, *REFUSES_A_SYSTEM_ROLE, *NOT_SEGMENTABLE} <= set(names)


@pytest.mark.parametrize("name", [p.stem for p in template_files()])
def test_template_renders_exactly(name: str, reports: dict[str, TemplateReport]) -> None:
    """System or none, 1 to 3 user turns, a post-history instruction, a continued reply: Cattery's
    text is the reference's, its segments make that text, and one turn more keeps the segments
    of the turns before (for templates that render message by message)."""
    report = reports[name]
    assert report.failures == []
    if name in REFUSES_A_PLAIN_CHAT:
        assert report.refuses_chat and report.checked == 0
    else:
        assert report.refuses_chat is None and report.checked == 6


def test_which_templates_refuse_or_render_whole(reports: dict[str, TemplateReport]) -> None:
    assert {n for n, r in reports.items() if r.refuses_chat} == REFUSES_A_PLAIN_CHAT
    assert {n for n, r in reports.items() if r.refuses_system} == REFUSES_A_SYSTEM_ROLE
    assert {n for n, r in reports.items() if not r.segmentable} == NOT_SEGMENTABLE


def test_a_template_that_writes_eos_without_a_generation_prompt_ends_in_its_generation_prompt() -> None:
    """Phi-3.5 writes the EOS text after the last message when there is no generation prompt:
    that is the end of every prefix rendering, not of a message, and not in the prompt."""
    history = [Message("user", "Hi"), Message("assistant", "Hello"), Message("user", "Bye")]
    r = render_template(PHI.read_text(), "S", history, bos_token="<s>", eos_token="<|endoftext|>")
    assert r.segmentable
    assert r.pinned == "<|system|>\nS<|end|>\n"
    assert r.turns == ["<|user|>\nHi<|end|>\n", "<|assistant|>\nHello<|end|>\n", "<|user|>\nBye<|end|>\n"]
    assert r.generation == "<|assistant|>\n"


def test_a_command_r_turn_opening_is_not_cut_in_half() -> None:
    """Command R7B writes its own turn's opening after the last message even without a generation
    prompt; the next message opens with the same marker. A segment ends between markers."""
    source = (TEMPLATES / "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja").read_text()
    history = [Message("user", "Hi"), Message("assistant", "Hello"), Message("user", "Bye")]
    r = render_template(source, "S", history, bos_token="<BOS_TOKEN>", eos_token="<|END_OF_TURN_TOKEN|>")
    assert r.segmentable
    for text in [r.pinned, *r.turns]:
        assert text.endswith("|>"), text[-40:]
    assert r.turns[0].startswith("<|USER_TOKEN|>") and r.generation.startswith("<|CHATBOT_TOKEN|>")


def gguf_with_template(model_path: Path, folder: Path, template: Path) -> Path:
    """The bundled model with another chat template in its metadata."""
    from tests.gguf_files import copy_gguf

    return copy_gguf(
        model_path,
        folder / f"{template.stem}.gguf",
        overrides={"tokenizer.chat_template": template.read_text(encoding="utf-8")},
    )


def test_cattery_prompt_with_phi_ends_in_the_assistant_turn(
    model_path: Path, tmp_path: Path, cattery_home: Path, bundled_info: ModelInfo
) -> None:
    gguf = gguf_with_template(model_path, tmp_path, PHI)
    messages = conversation(True, 2)
    (tmp_path / "history.json").write_text(json.dumps(messages[1:]))
    common = ["prompt", "-m", str(gguf), "--format", "gguf", "--system", SYSTEM, "--card", "none"]
    r = run_cattery(*common, "--history", str(tmp_path / "history.json"), "--json", home=cattery_home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    want = reference(
        PHI.read_text(), messages, bos_token=bundled_info.bos_token or "", eos_token=bundled_info.eos_token or ""
    )
    assert out["text"] == want
    assert out["text"].endswith("<|end|>\n<|assistant|>\n") and "<|im_end|>" not in out["text"]
    assert out["segmentable"] is True
    assert [s["kind"] for s in out["segments"]] == ["pinned", "turn", "turn", "turn", "generation"]
    assert out["segments"][-1]["text"] == "<|assistant|>\n"
    assert sum(s["tokens"] for s in out["segments"]) == out["tokens"]  # tokens of the bundled model
    plain = run_cattery(*common, "--history", str(tmp_path / "history.json"), home=cattery_home)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == want


def test_formats_lint_says_when_a_template_is_rendered_whole(
    model_path: Path, tmp_path: Path, cattery_home: Path
) -> None:
    gguf = gguf_with_template(model_path, tmp_path, TEMPLATES / "Qwen-Qwen3-0.6B.jinja")
    r = run_cattery("formats", "lint", "gguf", "--model", str(gguf), home=cattery_home)
    assert r.returncode == 1, r.stderr
    assert "does not render message by message" in r.stdout
    assert "renders the whole window" in r.stdout
    phi = run_cattery("formats", "lint", "gguf", "--model", str(gguf_with_template(model_path, tmp_path, PHI)))
    assert phi.returncode == 0 and "no problems found" in phi.stdout, phi.stdout + phi.stderr
