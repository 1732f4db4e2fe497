"""The sliding window: pinned block untouched, oldest whole messages out first, budget respected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.engine.engine import Engine
from app.errors import ContextOverflowError
from app.prompt.builder import PromptBuilder
from app.prompt.segments import Message
from app.prompt.tokens import tokenizer_from
from app.prompt.window import WindowState, fit_window
from tests.conftest import run_cattery

ROLES = ["user", "assistant"] * 10


def test_everything_fits_nothing_moves() -> None:
    state = WindowState()
    fit = fit_window(pinned=50, examples=20, turns=[10] * 6, generation=3, budget=200, state=state, roles=ROLES)
    assert (fit.start, fit.examples_kept, fit.total) == (0, True, 133)


def test_examples_leave_before_any_message() -> None:
    state = WindowState()
    fit = fit_window(pinned=50, examples=40, turns=[10] * 6, generation=3, budget=120, state=state, roles=ROLES)
    assert fit.start == 0 and not fit.examples_kept and state.examples_dropped
    # Once gone, they stay gone.
    again = fit_window(pinned=50, examples=40, turns=[10] * 6, generation=3, budget=500, state=state, roles=ROLES)
    assert not again.examples_kept


def test_pinned_examples_stay() -> None:
    state = WindowState()
    fit = fit_window(
        pinned=50, examples=40, turns=[10] * 8, generation=3, budget=150, state=state, roles=ROLES, pin_examples=True
    )
    assert fit.examples_kept and fit.start > 0 and fit.total <= 150


def test_oldest_whole_exchanges_leave_with_slack() -> None:
    state = WindowState()
    turns = [30] * 20
    fit = fit_window(pinned=100, examples=0, turns=turns, generation=5, budget=500, state=state, roles=ROLES)
    assert fit.total <= 500 - 0.25 * (500 - 105)
    assert fit.start % 2 == 0  # the window starts on a user message
    assert fit.evicted_now == list(range(fit.start))
    # The next turns fit without another eviction: eviction comes in blocks.
    turns += [30, 30]
    quiet = fit_window(pinned=100, examples=0, turns=turns, generation=5, budget=500, state=state, roles=ROLES + ROLES)
    assert quiet.evicted_now == [] and quiet.start == fit.start


def test_newest_message_too_long_is_an_error() -> None:
    with pytest.raises(ContextOverflowError, match="newest message"):
        fit_window(
            pinned=10,
            examples=0,
            turns=[10, 10, 900],
            generation=2,
            budget=500,
            state=WindowState(),
            roles=["user", "assistant", "user"],
        )


def test_pinned_block_too_long_is_an_error() -> None:
    with pytest.raises(ContextOverflowError, match="pinned block"):
        fit_window(pinned=600, examples=0, turns=[10], generation=2, budget=500, state=WindowState(), roles=["user"])


def test_builder_window_on_real_tokens(engine: Engine) -> None:
    tok = tokenizer_from(engine)
    history = []
    for i in range(30):
        history.append(Message("user", f"Question {i}: tell me something about cats, please, in detail."))
        history.append(Message("assistant", f"Answer {i}: cats are curious animals that sleep a lot every day."))
    history.append(Message("user", "And the last question?"))
    builder = PromptBuilder("chatml", info=engine.info, tokenizer=tok, system="You know cats.")
    state = WindowState()
    built = builder.build(history, n_ctx=512, reserve=100, state=state)
    assert len(built.tokens) <= 512 - 100
    assert built.segments[0].kind == "pinned" and built.segments[0].text.startswith("<|im_start|>system\nYou know")
    assert built.kept[-1] == len(history) - 1 and built.dropped == list(range(built.kept[0]))
    assert history[built.kept[0]].role == "user"
    assert built.evicted_now == built.dropped
    assert built.tokens == [t for s in built.segments for t in s.tokens]
    # The window stays where it is on the next turn.
    history += [Message("assistant", "Cats."), Message("user", "Thanks!")]
    again = builder.build(history, n_ctx=512, reserve=100, state=state)
    assert again.kept[0] == built.kept[0] and again.evicted_now == []


def test_prompt_command_reports_the_window(cattery_home: Path, tmp_path: Path) -> None:
    history = [{"role": "system", "content": "You are a cat."}]
    for i in range(40):
        history.append({"role": "user", "content": f"Message {i}: what do cats dream about at night?"})
        history.append({"role": "assistant", "content": f"Reply {i}: they dream of mice and sunny windows."})
    path = tmp_path / "history.json"
    path.write_text(json.dumps(history))
    args = ["prompt", "-m", "SmolLM2-135M-Instruct.Q4_1", "--history", str(path), "--ctx", "512", "--reserve", "64"]
    args += ["--card", "none"]
    r = run_cattery(*args, "--json", home=cattery_home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["format"] == "gguf" and out["n_ctx"] == 512 and out["budget"] == 448
    assert out["tokens"] <= 448 and out["pinned_tokens"] > 5
    assert out["dropped"] == list(range(out["kept"][0])) and out["kept"][-1] == 79
    assert out["segments"][0]["text"] == "<|im_start|>system\nYou are a cat.<|im_end|>\n"
    text = run_cattery(*args, home=cattery_home).stdout
    assert text == out["text"]
    # Without a model there are no token counts and no window.
    plain = json.loads(
        run_cattery(
            "prompt", "--format", "metharme", "--history", str(path), "--json", "--card", "none", home=cattery_home
        ).stdout
    )
    assert plain["tokens"] is None and plain["dropped"] == [] and plain["text"].startswith("<|system|>You are a cat.")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("not json", "not valid JSON"),
        ('{"role": "user"}', "expected a JSON list"),
        ('[{"role": "robot", "content": "x"}]', "message 0: role must be"),
    ],
)
def test_bad_history_files(content: str, fragment: str, tmp_path: Path, cattery_home: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(content)
    r = run_cattery("prompt", "--format", "chatml", "--history", str(path), home=cattery_home)
    assert r.returncode != 0 and fragment in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_example_dialogue_leaves_first_and_is_reported(engine: Engine) -> None:
    tok = tokenizer_from(engine)
    examples = [[Message("user", "Example question about tea?"), Message("assistant", "Example answer: tea is nice.")]]
    history = [Message("user" if i % 2 == 0 else "assistant", f"Message {i} about tea and biscuits.") for i in range(9)]
    builder = PromptBuilder("chatml", info=engine.info, tokenizer=tok, system="S", examples=examples)
    roomy = builder.build(history, n_ctx=2048, reserve=64, state=WindowState())
    assert roomy.examples_kept and [s.kind for s in roomy.segments][:2] == ["pinned", "example"]
    state = WindowState()
    tight_ctx = len(roomy.tokens) + 64 - 10  # ten tokens short: dropping the examples is enough
    tight = builder.build(history, n_ctx=tight_ctx, reserve=64, state=state)
    assert not tight.examples_kept and tight.dropped == [] and state.examples_dropped
    assert "example" not in [s.kind for s in tight.segments]
    pinned = PromptBuilder("chatml", info=engine.info, tokenizer=tok, system="S", examples=examples, pin_examples=True)
    kept = pinned.build(history, n_ctx=tight_ctx, reserve=64, state=WindowState())
    assert kept.examples_kept and kept.dropped  # pinned examples stay; messages leave instead
