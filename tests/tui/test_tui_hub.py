"""The hub screen, driven by Pilot: search, a repo's models with fit verdicts, download with
progress, cancel (kept for a resume), resume, load. The hub is the loopback test server; the
real huggingface_hub client is pointed at it by its own settings (ENDPOINT, the cache)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.hub_server import FILE, SMOL, HubServer
from tests.tui_helpers import SIZE, make_app, wait_until


@pytest.fixture
def hf(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    hub.faults.clear()
    hub.requests.clear()
    cache = tmp_path / "hf" / "hub"
    # What HF_ENDPOINT sets when huggingface_hub is imported (it already is, in this process).
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", "")
    return cache


async def goto_hub(pilot, app):
    await pilot.press("f7")
    await wait_until(pilot, lambda: type(app.screen).__name__ == "HubScreen", what="the hub screen")
    await pilot.pause(0.2)
    return app.screen


def test_search_choose_download_cancel_resume_and_load(cattery_home: Path, hf: Path, hub: HubServer) -> None:
    app = make_app(card_ref="none", card_explicit=True)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.model_status.state == "ready", what="the bundled model")
            screen = await goto_hub(pilot, app)
            screen.query_one("#hub-search").value = "smollm2"
            await pilot.press("enter")
            await wait_until(pilot, lambda: len(screen.hits) == 2, what="the search")
            repos = screen.query_one("#hub-repos")
            assert [str(k.value) for k in repos.rows] == [SMOL, "cattery-test/SmolLM2-split-GGUF"]
            repos.focus()
            repos.move_cursor(row=0)
            await pilot.press("enter")
            await wait_until(pilot, lambda: bool(screen.models), what="the models")
            files = screen.query_one("#hub-files")
            label = f"{SMOL}:Q4_1"
            await wait_until(pilot, lambda: "fits" in str(files.get_cell(label, "fit")), what="the verdict")
            assert "fits in RAM" in str(files.get_cell(label, "fit"))
            # A slow download, cancelled part way: what arrived stays for a resume.
            hub.fault(SMOL, FILE, rate=15_000_000)
            files.focus()
            await pilot.press("ctrl+d")
            blobs = hf / f"models--{SMOL.replace('/', '--')}" / "blobs"

            def partial_size() -> int:
                found = list(blobs.glob("*.cattery-partial")) if blobs.is_dir() else []
                return found[0].stat().st_size if found else 0

            await wait_until(pilot, lambda: partial_size() > 5_000_000, what="some bytes")
            assert "MB/s" in str(screen.query_one("#hub-state").render())
            await pilot.press("escape")
            await wait_until(pilot, lambda: screen.downloading is None, what="the cancel")
            assert "cancelled" in str(screen.query_one("#hub-state").render())
            kept = partial_size()
            assert kept > 0
            # Again: it continues from what was kept, is checked, and loads.
            await pilot.press("ctrl+d")
            await wait_until(pilot, lambda: screen.downloaded is not None, what="the download")
            last = [h for m, p, h in hub.requests if m == "GET" and p.endswith(FILE)][-1]
            assert int((last.get("Range") or last.get("range")).split("=")[1].rstrip("-")) > 0
            assert "SHA-256" in str(screen.query_one("#hub-state").render())
            await pilot.press("ctrl+l")
            # (the bundled model was "ready" before: wait for this one, whose load may also fail)
            await wait_until(
                pilot,
                lambda: app.model_status.path == screen.downloaded and app.model_status.state in ("ready", "failed"),
                what="the download loaded",
            )
            assert app.model_status.state == "ready" and app.current_mode == "chat", app.model_status.error

    try:
        asyncio.run(run())
    finally:
        app.engine.close()


def test_errors_are_lines_on_the_screen(cattery_home: Path, hf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    app = make_app(card_ref="none", card_explicit=True)
    app.launch.load_model = False

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await goto_hub(pilot, app)
            screen.files("nobody/nothing")
            screen.repo = "nobody/nothing"
            await wait_until(pilot, lambda: "no such repo" in str(screen.query_one("#hub-state").render()))
            monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
            screen.query_one("#hub-search").value = "smollm2"
            screen.query_one("#hub-search").focus()
            await pilot.press("enter")
            await wait_until(pilot, lambda: "offline" in str(screen.query_one("#hub-state").render()))
            assert screen.query_one("#hub-state").has_class("error-line")

    asyncio.run(run())
