"""Issue 20: thinking models through the real chat path (ChatSession on the bundled model).

The bundled model does not think by itself, so its replies are scripted with a llama.cpp grammar:
the tokens are still sampled by llama.cpp through the engine, the prompt is still Cattery's, only
their shape is fixed (a reasoning block, then an answer). Nothing is mocked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine.engine import Engine
from app.engine.options import LoadOptions, SamplerSettings
from app.errors import CatteryError
from app.session.chat import ChatSession, start_session
from app.session.workspace import Workspace

THINK_THEN_ANSWER = 'root ::= "<think>" [a-z ]{12,80} "</think>" "\\n\\n" [A-Z] [a-z ,]{8,60} "."'


def sampler(grammar: str, max_tokens: int = 80, temperature: float = 0.0, **kw: object) -> SamplerSettings:
    return SamplerSettings(temperature=temperature, max_tokens=max_tokens, seed=7, grammar=grammar, **kw)  # type: ignore[arg-type]


def session_on(ws: Workspace, engine: Engine, fmt: str, grammar: str, **kw: object) -> ChatSession:
    s = start_session(ws, None, sampler=sampler(grammar, **kw))  # type: ignore[arg-type]
    s.attach(engine, ws.chat_format(None, None, fmt))
    return s


def test_the_reasoning_is_stored_apart_and_left_out_of_the_next_prompt(ws: Workspace, engine: Engine) -> None:
    s = session_on(ws, engine, "chatml", THINK_THEN_ANSWER)
    s.add_user("What is two plus two?")
    out = s.run("reply")
    m = s.messages[-1]
    assert out.reasoning and m.reasoning == out.reasoning and "<think>" not in m.text and m.text == out.text
    assert m.text[0].isupper() and "</think>" not in m.text
    facts = m.swipes[0].provenance["reasoning"]
    assert facts["tokens"] == len(engine.segment_tokenize(m.reasoning)) and facts["open"] is False

    s.add_user("And three plus three?")
    sent = s._next_built(s.history()).text
    assert m.text in sent and m.reasoning not in sent and "<think>" not in sent

    # Kept (the chat's own switch, saved with it): the block goes back in, as the model wrote it.
    s.set_thinking(keep=True)
    kept = s._next_built(s.history()).text
    assert f"<think>\n{m.reasoning}\n</think>\n\n{m.text}" in kept
    assert ChatSession(s.store, s.chat_id, s.recipe, s.sampler).thinking.keep  # reopened: still on
    branched = s.branch(len(s.messages) - 1)
    assert ChatSession(s.store, branched, s.recipe, s.sampler).thinking.keep  # a branch keeps the choice
    # The window counts only what is sent: the reasoning's tokens only while it is kept.
    with_reasoning = len(s._next_built(s.history()).tokens or [])
    s.set_thinking(keep=False)
    without = len(s._next_built(s.history()).tokens or [])
    assert with_reasoning - without >= len(engine.segment_tokenize(m.reasoning))


def test_a_swipe_has_its_own_reasoning(ws: Workspace, engine: Engine) -> None:
    s = session_on(ws, engine, "chatml", THINK_THEN_ANSWER, temperature=1.5)
    s.add_user("Tell me a colour.")
    s.run("reply")
    s.sampler = s.sampler.updated(seed=11)
    s.run("regenerate")
    first, second = s.messages[-1].swipes
    assert first.reasoning and second.reasoning and (first.reasoning, first.text) != (second.reasoning, second.text)
    assert s.messages[-1].reasoning == second.reasoning  # the one shown is the new one
    s.select_swipe(len(s.messages) - 1, -1)
    assert s.messages[-1].reasoning == first.reasoning


def test_a_reply_cut_while_thinking_is_continued_inside_its_block(ws: Workspace, engine: Engine) -> None:
    s = session_on(ws, engine, "chatml", 'root ::= "<think>" [a-z ]{60,300} "</think>" [a-z ]{3,9}', max_tokens=12)
    s.add_user("Think hard.")
    s.run("reply")
    m = s.messages[-1]
    assert m.reasoning and m.text == "" and m.swipes[0].provenance["reasoning"]["open"] is True
    before = m.reasoning
    # The continue goes on thinking (the prompt ends inside the block), then answers.
    s.sampler = sampler('root ::= [a-z ]{3,20} "</think>" "\\n\\n" [A-Z] [a-z ]{3,30} "."', max_tokens=60)
    s.run("continue")
    assert s.last_built is not None and s.last_built.text.endswith(f"<|im_start|>assistant\n<think>\n{before}")
    m = s.messages[-1]
    assert m.reasoning.startswith(before) and len(m.reasoning) > len(before)
    assert m.text and m.text[0].isupper() and m.swipes[0].provenance["reasoning"]["open"] is False


def test_the_budget_closes_the_block_and_the_answer_follows(ws: Workspace, engine: Engine) -> None:
    """DeepSeek-R1's format opens the block in the prompt, and the bundled model never writes the
    closing marker (nor, with ban_eos, ends): only the budget can close it. After 8 tokens of thinking
    the marker is written for the model and it goes on to the answer."""
    s = start_session(ws, None, sampler=SamplerSettings(temperature=0.0, max_tokens=40, seed=7, ban_eos=True))
    s.attach(engine, ws.chat_format(None, None, "deepseek-r1"))
    s.set_thinking(budget=8)
    s.add_user("Be quick.")
    out = s.run("reply")
    m = s.messages[-1]
    facts = m.swipes[0].provenance["reasoning"]
    assert facts["budget_closed"] is True and facts["open"] is False
    assert 1 <= len(engine.segment_tokenize(m.reasoning)) <= 9 and m.text.strip()
    assert out.stats is not None and out.stats.generated_tokens <= 40
    assert "</think>" in engine.detokenize(engine.cached_tokens())  # the second part went on after the marker
    # Without a budget the same reply thinks to the end of its tokens and is cut while thinking.
    s.set_thinking(budget=0)
    s.run("regenerate")
    m = s.messages[-1]
    assert m.text == "" and m.reasoning and m.swipes[m.active].provenance["reasoning"]["open"] is True


def test_thinking_off_opens_the_reply_with_an_empty_block(ws: Workspace, engine: Engine) -> None:
    s = session_on(ws, engine, "chatml", "root ::= [A-Z] [a-z ]{5,30} [.]")
    s.set_thinking(enabled=False)
    s.add_user("Hi.")
    out = s.run("reply")
    assert s.last_built is not None and s.last_built.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert out.reasoning == "" and s.messages[-1].reasoning == "" and out.text
    # DeepSeek-R1's prompt opens the block: skipping closes it at once.
    r1 = session_on(ws, engine, "deepseek-r1", "root ::= [A-Z] [a-z ]{5,30} [.]")
    r1.set_thinking(enabled=False)
    r1.add_user("Hi.")
    out = r1.run("reply")
    assert r1.last_built is not None and r1.last_built.text.endswith("<｜Assistant｜><think>\n\n</think>\n\n")
    assert out.reasoning == "" and out.text
    # A format without a reasoning block has nothing to switch off: the prompt is as ever.
    plain = session_on(ws, engine, "llama3", "root ::= [A-Z] [a-z ]{5,30} [.]")
    plain.set_thinking(enabled=False)
    plain.add_user("Hi.")
    plain.run("reply")
    assert plain.last_built is not None and "<think>" not in plain.last_built.text


def test_a_gguf_template_with_think_markers_is_a_thinking_models(model_path: Path, tmp_path: Path) -> None:
    """The markers and whether the prompt opens the block come from the template itself."""
    from app.engine.metadata import read_model_info
    from app.prompt.builder import PromptBuilder
    from tests.gguf_files import copy_gguf

    qwen3 = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
    )
    r1 = (  # as DeepSeek-R1's: an earlier reply's reasoning is cut off, and the prompt opens the block
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.split('</think>')[-1] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
    )
    found = {}
    for name, template in (("qwen3", qwen3), ("r1", r1)):
        path = copy_gguf(model_path, tmp_path / f"{name}.gguf", overrides={"tokenizer.chat_template": template})
        markers = PromptBuilder("gguf", info=read_model_info(path)).reasoning
        assert markers is not None and (markers.start, markers.end, markers.origin) == (
            "<think>",
            "</think>",
            "template",
        )
        found[name] = (markers.opened, markers.skip)
    # Qwen3's skip is what its own template writes with enable_thinking=False; R1's closes the opened block.
    assert found == {"qwen3": (False, "<think>\n\n</think>\n\n"), "r1": (True, "\n</think>\n\n")}
    assert PromptBuilder("gguf", info=read_model_info(model_path)).reasoning is None  # SmolLM2's own: no block


def test_reasoning_goes_through_sillytavern_jsonl_and_markdown(ws: Workspace, engine: Engine, tmp_path: Path) -> None:
    """Each swipe's reasoning leaves in SillyTavern's places (`extra.reasoning` for the one shown,
    `swipe_info[i].extra.reasoning` for each) and comes back from them; Markdown shows it folded."""
    import json

    from app.chats.transfer import export_markdown, export_st_chat, import_st_chat

    s = session_on(ws, engine, "chatml", THINK_THEN_ANSWER, temperature=1.5)
    s.add_user("A colour?")
    s.run("reply")
    s.sampler = s.sampler.updated(seed=12)
    s.run("regenerate")
    original = s.messages[-1]
    out = tmp_path / "chat.jsonl"
    export_st_chat(ws.store, s.chat_id, out)
    line = json.loads(out.read_text().splitlines()[-1])
    assert line["extra"]["reasoning"] == original.reasoning
    assert [i["extra"]["reasoning"] for i in line["swipe_info"]] == [sw.reasoning for sw in original.swipes]
    back = ws.store.messages(import_st_chat(ws.store, out))[-1]
    assert [sw.reasoning for sw in back.swipes] == [sw.reasoning for sw in original.swipes]
    assert [sw.text for sw in back.swipes] == [sw.text for sw in original.swipes] and back.active == original.active

    md = tmp_path / "chat.md"
    export_markdown(ws.store, s.chat_id, md)
    text = md.read_text()
    assert "<details>\n<summary>Thought for" in text and original.reasoning in text
    assert text.index(original.reasoning) < text.index(original.text)

    # A file whose reasoning is not text is refused in one line, nothing stored.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(out.read_text().splitlines()[0] + "\n" + json.dumps({"mes": "x", "extra": {"reasoning": 5}}) + "\n")
    before = len(ws.store.list_chats())
    with pytest.raises(CatteryError, match=r"extra\.reasoning should be text"):
        import_st_chat(ws.store, bad)
    assert len(ws.store.list_chats()) == before


def test_the_line_chat_writes_the_reasoning_to_stderr_or_hides_it(cattery_home: Path) -> None:
    """`cattery chat --plain` as a user runs it: the answer on stdout, the reasoning on stderr with
    how long it thought; `--hide-thinking` leaves the reasoning out; `/thinking` changes the chat's
    choices. The grammar (in the settings, as a user would set it) shapes the bundled model's reply."""
    from tests.conftest import run_cattery

    (cattery_home / "config").mkdir(parents=True, exist_ok=True)
    grammar = 'root ::= "<think>" [a-z ]{20,60} "</think>" "\\n\\n" [A-Z] [a-z ,]{5,40} "."'
    (cattery_home / "config" / "settings.toml").write_text(f"[sampler]\ngrammar = '''{grammar}'''\n")
    args = ("chat", "--plain", "--new", "--card", "none", "--format", "chatml", "--temp", "0", "-n", "60")
    r = run_cattery(*args, input="Hello there\n/thinking keep\n", home=cattery_home)
    assert r.returncode == 0, r.stderr
    answer = r.stdout.strip().splitlines()[0]
    assert answer[0].isupper() and "<think>" not in answer and "</think>" not in answer
    reasoning = next(line for line in r.stderr.splitlines() if line and line[0].islower() and " " in line)
    assert "(thought for " in r.stderr and reasoning not in r.stdout
    assert "reasoning kept in later prompts" in r.stdout
    hidden = run_cattery(*args, "--hide-thinking", input="Hello there\n", home=cattery_home)
    assert hidden.returncode == 0, hidden.stderr
    assert "(thought for " in hidden.stderr and reasoning.strip() not in hidden.stderr


def test_thinking_off_uses_a_templates_own_switch(model_path: Path, tmp_path: Path, ws: Workspace) -> None:
    """A template with `enable_thinking` (Qwen3, SmolLM3) is rendered with it false, so the whole
    prompt is the template's own for "no thinking": SmolLM3's says so in its system block too."""
    from tests.gguf_files import copy_gguf

    smollm3_like = (
        "{% set mode = '/no_think' if enable_thinking is defined and not enable_thinking else '/think' %}"
        "<|im_start|>system\nReasoning Mode: {{ mode }}\n{% for m in messages %}{% if m.role == 'system' %}"
        "{{ m.content }}{% endif %}{% endfor %}<|im_end|>\n"
        "{% for m in messages %}{% if m.role != 'system' %}<|im_start|>{{ m.role }}\n"
        "{{ m.content.split('</think>')[-1] }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if mode == '/no_think' %}<think>\n\n</think>\n{% endif %}{% endif %}"
    )
    path = copy_gguf(model_path, tmp_path / "smollm3-like.gguf", overrides={"tokenizer.chat_template": smollm3_like})
    engine = Engine()
    engine.load(path, LoadOptions(ctx=1024, threads=2))
    try:
        s = start_session(ws, None, sampler=sampler("root ::= [A-Z] [a-z ]{5,20} [.]"))
        s.attach(engine, ws.chat_format(path, engine.info))
        assert s.builder is not None and s.builder.reasoning is not None
        assert s.builder.reasoning.switch == "enable_thinking"
        s.add_user("Hi.")
        s.run("reply")
        assert s.last_built is not None and "Reasoning Mode: /think" in s.last_built.text
        s.set_thinking(enabled=False)
        s.add_user("Again.")
        out = s.run("reply")
        text = s.last_built.text
        assert "Reasoning Mode: /no_think" in text and text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n")
        assert out.reasoning == "" and out.text
        # What the status bar counts is the same prompt.
        assert "Reasoning Mode: /no_think" in s._next_built(s.history()).text
    finally:
        engine.close()


def test_a_grammar_keeps_no_budget(ws: Workspace, engine: Engine) -> None:
    """A grammar shapes the whole reply; a second part would start it over (a second block in the
    answer), so with one the budget is not applied."""
    s = session_on(ws, engine, "chatml", THINK_THEN_ANSWER, max_tokens=80)
    s.set_thinking(budget=4)
    s.add_user("Hi.")
    out = s.run("reply")
    assert "<think>" not in out.text and out.reasoning
    assert s.messages[-1].swipes[0].provenance["reasoning"]["budget_closed"] is False
