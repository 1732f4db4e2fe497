"""Issue 19 in the app: the Models screen lists the inference servers named in the settings, tests a
connection, and switches the running app between its local model and a server, and back.

The server is a loopback stand-in for llama-server (tests/remote_fakes.py: llama-server cannot be
installed from the package index) that counts tokens with the bundled model's real vocabulary and
serves its real chat template from /props; the local model is the real bundled one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.chats.store import ChatStore
from app.engine.engine import Engine
from app.tui.screens.chat import describe_provenance
from app.tui.screens.models import ENGINE_KEY, EngineRow, ModelsScreen
from app.tui.widgets.status_bar import ModelLine, StatusBar
from tests.remote_fakes import free_port, llama_server
from tests.tui_helpers import SIZE, chat_screen, make_app, send, wait_until

MODEL = "/models/Cat-llama3-70B.Q4_K_M.gguf"


def said(app, *words: str) -> bool:
    return any(all(w in n.message for w in words) for n in list(app._notifications))


def test_the_models_screen_tests_an_engine_and_the_chat_goes_through_it_and_back(
    cattery_home: Path, engine: Engine
) -> None:
    fake = llama_server(engine, ["Bonjour", " from", " afar."], model=MODEL)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    (cattery_home / "config").mkdir(parents=True, exist_ok=True)
    (cattery_home / "config" / "settings.toml").write_text(
        f'[engines.box]\nurl = "{fake.url}"\n\n[engines.dead]\nurl = "{dead}"\n'
    )
    app = make_app(card_ref="none", card_explicit=True)  # loads the bundled model itself, as `cattery` does

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.model_status.state == "ready", what="the local model")
            await send(pilot, app, "Hi")  # a first reply on the local model
            await app.switch_mode("models")
            models = app.screen
            assert isinstance(models, ModelsScreen)
            await wait_until(pilot, lambda: ENGINE_KEY + "box" in models.engines, what="the engines listed")
            table = models.query_one("#model-table")

            async def choose(key: str) -> None:
                table.move_cursor(row=table.get_row_index(key))
                await wait_until(pilot, lambda: getattr(models.current, "key", None) == key, what=key)

            # An engine that does not answer: one line, and the local model stays in use.
            await choose(ENGINE_KEY + "dead")
            await pilot.press("ctrl+l")
            await wait_until(pilot, lambda: said(app, "engine dead:"), what="the refusal")
            await wait_until(pilot, lambda: app.model_status.state == "ready", what="the local model back")
            assert not app.is_remote and app.engine.loaded

            # The connection test says what answers and how fast, and fills the table's row.
            await choose(ENGINE_KEY + "box")
            await pilot.press("ctrl+t")
            row = models.engines[ENGINE_KEY + "box"]
            assert isinstance(row, EngineRow)
            await wait_until(pilot, lambda: row.probe is not None, what="the connection test")
            facts = str(models.query_one("#model-facts").render())
            assert f"llama-server serving {MODEL}" in facts and "context 4096 tokens;" in facts
            assert "chat template: the server's (/props)" in facts and "build b6000-test" in facts
            assert table.get_row("engine:box")[4] == "4096"

            # Use it: the local model's memory goes, the top bar says where the model runs.
            local = app.engine
            await pilot.press("ctrl+l")
            await wait_until(pilot, lambda: app.is_remote and app.model_status.state == "ready", what="the engine")
            await app.switch_mode("chat")
            line = str(chat_screen(app).query_one(ModelLine).render())
            assert f"Cat-llama3-70B.Q4_K_M · gguf · remote: {fake.url}" in line, line
            await wait_until(pilot, lambda: not local.loaded, what="the local model unloaded")

            # A turn through the server: the prompt is Cattery's, sent as token ids with the cache asked for.
            await send(pilot, app, "Where are you?")
            session = app.session
            assert session is not None and session.messages[-1].text == "Bonjour from afar."
            body = fake.seen[-1]
            assert body["cache_prompt"] is True and isinstance(body["prompt"], list)
            tail = engine.segment_tokenize("<|im_end|>\n<|im_start|>assistant\n")
            assert body["prompt"][-len(tail) :] == tail  # the bundled model's own template, rendered by Cattery
            assert engine.detokenize(body["prompt"]).endswith("user\nWhere are you?\nassistant\n")
            bar = str(chat_screen(app).query_one(StatusBar).render())  # the server's own count, per turn
            assert f"server evaluated {len(body['prompt'])}" in bar, bar

            # Back to the local model from the Models screen.
            await app.switch_mode("models")
            await choose(str(local_path(app)))
            await pilot.press("ctrl+l")
            await wait_until(
                pilot, lambda: not app.is_remote and app.model_status.state == "ready", what="the local model"
            )
            assert app.engine is local and local.loaded
            await wait_until(pilot, lambda: table.get_row(ENGINE_KEY + "box")[0] == "", what="the marks")
            await app.switch_mode("chat")
            await send(pilot, app, "And now?")

    try:
        asyncio.run(run())
    finally:
        for eng in app.engines():
            eng.close()
        fake.close()
    store = ChatStore(cattery_home / "data" / "chats.sqlite3")
    try:
        rows = store.messages(int(store.get_state("last_chat") or 0))
    finally:
        store.close()
    replies = [m for m in rows if m.role == "assistant"]
    assert len(replies) == 3
    assert replies[0].swipes[0].provenance["model"]["quant"] == "Q4_1"
    remote = replies[1].swipes[0].provenance["model"]
    assert remote["engine"] == fake.url and remote["server_model"] == MODEL and remote["build"] == "b6000-test"
    details = describe_provenance(replies[1].swipes[0].provenance, "done")
    assert f"model        {MODEL}, served by llama-server" in details
    assert f"engine       {fake.url}, build b6000-test" in details and "evaluated by the server" in details
    assert replies[2].swipes[0].provenance["model"]["quant"] == "Q4_1"


def local_path(app) -> Path:
    from app.hub.bundled import find_bundled_model

    path = find_bundled_model()
    assert path is not None
    return path


def test_an_engine_is_added_from_the_models_screen_by_its_url(cattery_home: Path, engine: Engine) -> None:
    """Ctrl+E: the server's URL, then a name (one is offered); it lands in settings.toml as
    [engines.NAME] and in the table. A URL that is not http(s) is one line and nothing is written."""
    import tomllib

    from app.tui.screens.dialogs import AskScreen
    from tests.tui_helpers import answer

    app = make_app(engine, card_ref="none", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await app.switch_mode("models")
            models = app.screen
            await pilot.press("ctrl+e")
            await answer(pilot, app, "file:///etc/passwd")
            await wait_until(pilot, lambda: said(app, "file:///etc/passwd"), what="the refusal")
            await pilot.press("ctrl+e")
            await answer(pilot, app, "http://192.168.1.20:8080")
            await wait_until(pilot, lambda: isinstance(app.screen, AskScreen) and app.screen.value, what="the name")
            await pilot.press("enter")  # the name offered, as it is
            await wait_until(pilot, lambda: ENGINE_KEY + "192.168.1.20-8080" in models.engines, what="the new row")

    asyncio.run(run())
    settings = tomllib.loads((cattery_home / "config" / "settings.toml").read_text())
    assert settings["engines"] == {"192.168.1.20-8080": {"url": "http://192.168.1.20:8080"}}
