"""The workshop screen (F8), driven by Pilot: a quantization and a build with a progress bar,
a stopped build leaving nothing, the result loaded into the chat."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.gguf_files import dequantized_copy
from tests.hf_fixtures import random_llama
from tests.tui_helpers import SIZE, make_app, wait_until


@pytest.fixture(scope="module")
def f32_model(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dequantized_copy(model_path, tmp_path_factory.mktemp("ws") / "smol-F32.gguf")


async def goto(pilot, app):
    await pilot.press("f8")
    await wait_until(pilot, lambda: type(app.screen).__name__ == "WorkshopScreen", what="the workshop")
    await pilot.pause(0.2)
    return app.screen


def test_quantize_a_library_model_and_load_it(cattery_home: Path, f32_model: Path) -> None:
    models = cattery_home / "data" / "models"
    models.mkdir(parents=True)
    src = models / "smol-F32.gguf"
    src.symlink_to(f32_model)
    app = make_app(card_ref="none", card_explicit=True)
    app.launch.load_model = False

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await goto(pilot, app)
            screen.query_one("#quant-model").value = str(src)
            screen.query_one("#quant-type").value = "Q8_0"
            # Every progress line the screen draws (polling would miss them all when the job is fast).
            shown: list[str] = []
            draw = screen._show_progress

            def drawn(*args: object) -> None:
                draw(*args)
                shown.append(str(screen.query_one("#work-state").render()))

            screen._show_progress = drawn
            await pilot.click("#quantize")

            def finished() -> bool:
                return screen.running is None and screen.result is not None

            await wait_until(pilot, finished)
            # while it ran: tensors done of the total, bytes done of the total, the tensor at hand
            assert any(re.match(r"\d+/\d+ tensors · [\d.]+ \w?B of [\d.]+ MB · \d+% · ", s) for s in shown), shown[-5:]
            assert screen.result == models / "smol.Q8_0.gguf" and screen.result.is_file()
            assert "done" in str(screen.query_one("#work-state").render())
            await pilot.click("#load-result")
            result = models / "smol.Q8_0.gguf"

            def settled() -> bool:  # this model's load ended (the state alone may still be the last one's)
                return app.model_status.path == result and app.model_status.state in ("ready", "failed")

            await wait_until(pilot, settled, what="the result loaded")
            assert app.model_status.state == "ready", app.model_status.error

    try:
        asyncio.run(run())
    finally:
        app.engine.close()


def test_a_stopped_build_leaves_nothing_and_a_build_runs(cattery_home: Path, tmp_path: Path) -> None:
    base = random_llama(tmp_path / "base", seed=1, n_layer=3)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'name = "ws-build"\n[sources]\nbase = "{base}"\n[quantize]\ntypes = ["Q8_0"]\n')
    app = make_app(card_ref="none", card_explicit=True)
    app.launch.load_model = False
    out = cattery_home / "data" / "models" / "ws-build"

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await goto(pilot, app)
            screen.query_one("#recipe").value = str(recipe)
            screen.action_build()
            screen.stop.set()  # Esc right away: the build stops at its next progress report
            await wait_until(pilot, lambda: screen.running is None)
            assert "stopped" in str(screen.query_one("#work-state").render())
            assert not out.exists() or not list(out.rglob("*.gguf"))
            await pilot.click("#build")
            await wait_until(pilot, lambda: screen.running is None and screen.result is not None)
            assert screen.result == out / "ws-build.Q8_0.gguf"
            assert sorted(p.name for p in out.iterdir()) == ["ws-build.Q8_0.gguf"]

    asyncio.run(run())
