"""Issue 20 in the app: a thinking model's reply streams with its reasoning folded apart, unfolds on a
key, and the next prompt (`cattery prompt --json` on the chat) holds only the answer.

The model is the bundled one with a Qwen3-like chat template that writes <think> blocks (a GGUF copy
with only `tokenizer.chat_template` changed), so the markers come from the template as for a real
thinking model; its replies are shaped by a llama.cpp grammar (the bundled model does not think).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from textual.widgets import Checkbox

from app.engine.engine import Engine
from app.engine.options import LoadOptions
from app.tui.screens.thinking import ThinkingScreen
from app.tui.widgets.message_view import MessageView
from tests.conftest import run_cattery
from tests.gguf_files import copy_gguf
from tests.tui_helpers import SIZE, chat_screen, greedy, make_app, send, wait_until

QWEN3_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
GRAMMAR = 'root ::= "<think>" [a-z ]{40,120} "</think>" "\\n\\n" [A-Z] [a-z ,]{10,60} "."'


@pytest.fixture(scope="module")
def thinker(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("thinker")
    return copy_gguf(model_path, folder / "Thinker-135M.Q4_1.gguf", overrides={"tokenizer.chat_template": QWEN3_LIKE})


def test_a_thinking_reply_streams_folded_unfolds_and_stays_out_of_the_next_prompt(
    cattery_home: Path, thinker: Path
) -> None:
    engine = Engine()
    engine.load(thinker, LoadOptions(ctx=2048, threads=2))
    app = make_app(engine, sampler=greedy(120, grammar=GRAMMAR, seed=3), card_ref="none", card_explicit=True)
    seen: list[str] = []

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            chat = chat_screen(app)
            assert app.model_status.choice is not None and app.model_status.choice.name == "gguf"

            def thought_now() -> str:
                target = chat.target
                if target is None:
                    return ""
                widget = target.query_one(".thought")
                return str(widget.render()) if widget.display else ""

            async def watch() -> None:  # what the thought line said while the reply was written
                while True:
                    line = thought_now()
                    if line and (not seen or seen[-1] != line):
                        seen.append(line)
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            await send(pilot, app, "What is the sky's colour?")
            watcher.cancel()
            assert any(line.startswith("▸ thinking…") for line in seen), seen
            view = [v for v in chat.views if isinstance(v, MessageView) and v.role == "assistant"][-1]
            message = app.session.messages[-1]
            assert message.reasoning and "<think>" not in message.text
            assert view.body.source == message.text  # the answer alone in the body
            folded = str(view.query_one(".thought").render())
            assert folded.startswith("▸ thought for ") and message.reasoning not in folded
            await pilot.press("ctrl+b")
            unfolded = str(view.query_one(".thought").render())
            assert unfolded.startswith("▾ thought for ") and message.reasoning in unfolded
            await pilot.press("ctrl+b")
            await wait_until(pilot, lambda: str(view.query_one(".thought").render()).startswith("▸"), what="fold")

            # F12: the chat's thinking choices. Keeping the reasoning puts it back into the next prompt.
            for keep in (True, False):
                await pilot.press("f12")
                await wait_until(pilot, lambda: isinstance(app.screen, ThinkingScreen), what="the dialog")
                dialog = app.screen
                assert "between <think> and </think> (its GGUF chat template)" in str(
                    dialog.query_one(".hint").render()
                )
                dialog.query_one("#thinking-keep", Checkbox).value = keep
                await pilot.press("ctrl+s")
                await wait_until(pilot, lambda: not isinstance(app.screen, ThinkingScreen), what="saved")
                assert app.session.thinking.keep is keep
                history = app.session.history()
                assert (f"<think>\n{message.reasoning}\n</think>" in history[-1].content) is keep

    try:
        asyncio.run(run())
    finally:
        engine.close()
    chat_id = app.session.chat_id
    r = run_cattery("prompt", "--chat", str(chat_id), "--model", str(thinker), "--json", home=cattery_home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    stored = app.session.messages[-1]
    assert stored.text in out["text"] and stored.reasoning not in out["text"] and "<think>" not in out["text"]
