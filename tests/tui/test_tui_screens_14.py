"""Issue 14, the screens besides the chat: the app names its own controls (never a command-line
flag), the Workshop's switches and its marked quantized models, the wrong-model toast, F8 in the
footer and in order, Settings labels never cut, every screen usable at 40×12 and 60×16, dropdowns
from the keyboard, a Characters screen that follows chats and command-line imports, and cards of
one name told apart.

The app runs for real (Pilot) on the bundled model, real SQLite and the real `cattery` command.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from textual.content import Content
from textual.widgets import Checkbox, DataTable, Input, Label, ListView, Select

from app.errors import CatteryError
from app.tui.wording import FLAG, in_app
from tests.card_files import v2
from tests.conftest import FIXTURES, ROOT, run_cattery
from tests.gguf_files import dequantized_copy
from tests.hf_fixtures import random_llama
from tests.tui_helpers import SIZE, make_app, wait_until

SMALL = [(40, 12), (60, 16)]
OTHER_SCREENS = ["characters", "models", "chats", "settings", "hub", "workshop"]


def notified(app: Any, *words: str) -> list[str]:
    return [n.message for n in list(app._notifications) if all(w in n.message for w in words)]


def text_of(widget: Any) -> str:
    return str(widget.render())


async def goto(pilot: Any, app: Any, mode: str) -> Any:
    app.switch_mode(mode)
    await wait_until(pilot, lambda: app.current_mode == mode and app.screen.is_current, what=f"the {mode} screen")
    await pilot.pause()
    return app.screen


def bare_app() -> Any:
    """The app on a fresh home with no model loading (these screens do not need one)."""
    app = make_app(card_ref="none", card_explicit=True)
    app.launch.load_model = False
    return app


# -- 8: the app's words, not the command line's ------------------------------------------------

# Flags the core's messages name that no screen can show, and why.
NEVER_IN_THE_APP = {
    "--tensor-type": "quantize's tensor overrides: `cattery quantize` only",
    "--output-tensor-type": "`cattery quantize` only",
    "--token-embedding-type": "`cattery quantize` only",
    "--type": "`cattery quantize` with several types: the Workshop makes one at a time",
    "--chunks": "`cattery eval` only",
    "--merge": "llama-gguf-split's flag, for `cattery unpack` of a split file",
    "--unsafe-truncate-embeddings": "mergekit's own flag, named as mergekit's in a merge's note (what it would need)",
    "--no-deps": "part of a pip command to run in a shell",
    "--plain": "`cattery chat --plain`, said by the command line before an app starts",
    "--author-note": "note_from_options: about the flags just typed after `cattery`; in the app, its dialog (F10)",
    "--note-depth": "as --author-note",
    "--note-every": "as --author-note",
    "--note-role": "as --author-note",
    "--engine-tokenizer": "RemoteEngine.connect: the engine connects before the app starts (`cattery --engine`)",
}


def core_flags() -> dict[str, list[str]]:
    """Every `--flag` in a string of the core (not the CLI's own modules, not the app, not docstrings)."""
    found: dict[str, list[str]] = {}
    files = [*ROOT.glob("app/**/*.py"), *ROOT.glob("converters/**/*.py")]
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("app/tui/", "app/cli")) or rel == "app/plain_chat.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for flag in FLAG.findall(node.value):
                    found.setdefault(flag, []).append(f"{rel}:{node.lineno}")
    return found


def test_every_flag_the_core_names_has_the_apps_words() -> None:
    flags = core_flags()
    assert "--ctx" in flags and "--allow-requantize" in flags  # the scan sees them
    missing = {
        flag: where
        for flag, where in flags.items()
        if flag not in NEVER_IN_THE_APP and FLAG.search(in_app(f"x {flag} y"))
    }
    assert not missing, f"flags without the app's words in assets/app_words.toml: {missing}"


def test_core_messages_read_in_the_apps_words(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.engine.engine import Engine
    from app.engine.metadata import read_model_info
    from app.engine.options import LoadOptions
    from app.engine.preflight import check_memory, context_warnings
    from app.hub.bundled import missing_model_message
    from app.prompt.builder import choose_format
    from converters.quantize import quantize

    said: dict[str, str] = {}

    def caught(fn: Any) -> str:
        with pytest.raises(CatteryError) as exc:
            fn()
        return str(exc.value)

    said["requantize"] = caught(lambda: quantize(model_path, tmp_path / "x.Q4_0.gguf", "Q4_0"))
    said["imatrix"] = caught(lambda: quantize(model_path, tmp_path / "x.IQ2_XS.gguf", "IQ2_XS", allow_requantize=True))
    engine = Engine()
    options = LoadOptions(cache_type_k="q8_0", cache_type_v="q8_0", flash_attn="off")
    said["flash"] = caught(lambda: engine.load(model_path, options))
    said["ctx"] = caught(lambda: LoadOptions(ctx=-5).validate())
    info = read_model_info(model_path)
    monkeypatch.setattr("app.engine.preflight.available_ram", lambda: 1024)  # a machine with 1 KiB free
    said["memory"] = caught(lambda: check_memory(info, 4096, LoadOptions(), 0))
    [said["rope"]] = context_warnings(info, 4 * (info.context_length or 8192), LoadOptions())
    said["gguf"] = caught(lambda: choose_format("gguf", None))
    said["bundled"] = missing_model_message()
    for name, line in said.items():
        assert FLAG.search(line), f"{name}: the core's own message names its flag ({line})"
        left = [f for f in FLAG.findall(in_app(line)) if f not in NEVER_IN_THE_APP]  # a pip command keeps --no-deps
        assert not left, f"{name}: {in_app(line)}"
    assert "switch on “Allow requantizing” (Workshop, F8" in in_app(said["requantize"])
    assert "“Importance matrix”" in in_app(said["imatrix"])
    assert "[quantize] imatrix in the recipe" in in_app(said["imatrix"], "build")
    assert "set “Flash attention” to auto or on (Models, F4)" in in_app(said["flash"])
    assert in_app(said["ctx"]).startswith("“Context” (Models, F4) must be positive")
    assert "“Memory check” off" in in_app(said["memory"]) and "“GPU layers”" in in_app(said["memory"])
    assert "“RoPE scale” 4 (linear)" in in_app(said["rope"])
    assert "choose a model on the Models screen (F4)" in in_app(said["bundled"])


def test_the_workshop_marks_quantized_models_and_has_their_switches(
    cattery_home: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    models = cattery_home / "data" / "models"
    models.mkdir(parents=True)
    (models / "smol-F32.gguf").symlink_to(dequantized_copy(model_path, tmp_path_factory.mktemp("f32") / "s.gguf"))
    app = bare_app()
    made = models / "SmolLM2-135M-Instruct.Q4_0.gguf"

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await goto(pilot, app, "workshop")
            await wait_until(pilot, lambda: all(s.file_type for s in screen.sources.values()), what="the headers")
            select = screen.query_one("#quant-model", Select)
            labels = [str(prompt) for prompt, value in select._options if isinstance(value, str)]
            # the unquantized source first; the quantized one marked, with its type
            assert labels[0].startswith("smol-F32") and "already quantized" not in labels[0]
            [bundled] = [label for label in labels if "SmolLM2" in label]
            assert bundled.endswith("Q4_1, already quantized")
            select.value = str(model_path)
            note = screen.query_one("#quant-note")
            await wait_until(pilot, lambda: "already quantized" in text_of(note), what="the note")
            assert "“Allow requantizing”" in text_of(note)
            screen.query_one("#quant-type", Select).value = "Q4_0"
            await pilot.press("ctrl+t")  # Quantize
            work = screen.query_one("#work-state")
            await wait_until(pilot, lambda: "“Allow requantizing”" in text_of(work), what="the refusal")
            assert screen.running is None and "--" not in text_of(work) and not made.exists()
            screen.query_one("#allow-requantize", Checkbox).value = True
            await pilot.press("ctrl+t")  # Quantize
            await wait_until(pilot, lambda: screen.running is None and screen.result == made, what="the quantization")
            # again: the file is there; the switch to replace it is named, nothing runs
            before = made.stat().st_mtime_ns
            await pilot.press("ctrl+t")  # Quantize
            await wait_until(pilot, lambda: "switch on “Overwrite”" in text_of(work), what="the refusal")
            assert screen.running is None and "--" not in text_of(work) and made.stat().st_mtime_ns == before
            screen.query_one("#overwrite", Checkbox).value = True
            await pilot.press("ctrl+t")  # Quantize

            def replaced() -> bool:
                return screen.running is None and made.stat().st_mtime_ns != before and "done" in text_of(work)

            await wait_until(pilot, replaced, what="the second run")
            # the result is listed, marked as the quantized file it is
            await wait_until(pilot, lambda: str(made) in screen.sources and screen.sources[str(made)].quantized)

    try:
        asyncio.run(run())
    finally:
        app.engine.close()


def test_a_build_over_earlier_results_names_the_overwrite_switch(cattery_home: Path, tmp_path: Path) -> None:
    base = random_llama(tmp_path / "base", seed=3, n_layer=2)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'name = "ws-again"\n[sources]\nbase = "{base}"\n[quantize]\ntypes = ["Q8_0"]\n')
    out = cattery_home / "data" / "models" / "ws-again"
    out.mkdir(parents=True)
    (out / "ws-again.Q8_0.gguf").write_bytes(b"an earlier result")
    app = bare_app()

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await goto(pilot, app, "workshop")
            screen.query_one("#recipe", Input).value = str(recipe)
            refused = screen.query_one("#work-state")
            await pilot.press("ctrl+b")  # Build
            await wait_until(pilot, lambda: screen.running is None and refused.has_class("error-line"), what="refusal")
            state = text_of(refused)
            assert "switch on “Overwrite” (Workshop, F8)" in state and "--" not in state, state
            screen.query_one("#overwrite", Checkbox).value = True
            refusal = text_of(refused)
            await pilot.press("ctrl+b")  # Build
            await wait_until(pilot, lambda: screen.running is None and text_of(refused) != refusal, what="the build")
            assert screen.result is not None, text_of(screen.query_one("#work-state"))
            assert (out / "ws-again.Q8_0.gguf").read_bytes()[:4] == b"GGUF"

    asyncio.run(run())


def test_models_screen_failures_name_its_controls_and_the_file_once(cattery_home: Path) -> None:
    models = cattery_home / "data" / "models"
    models.mkdir(parents=True)
    bad = models / "bad.gguf"
    bad.write_bytes(b"this is not a model")
    app = bare_app()

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await goto(pilot, app, "models")
            table = screen.query_one("#model-table", DataTable)
            await wait_until(pilot, lambda: str(bad) in screen.rows and screen.rows[str(bad)].error, what="the scan")
            # the wrong file: one line that names it once
            table.move_cursor(row=table.get_row_index(str(bad)))
            await wait_until(pilot, lambda: screen.current is screen.rows[str(bad)], what="the row")
            await pilot.press("ctrl+l")
            await wait_until(pilot, lambda: bool(notified(app, "not a GGUF file")), what="the toast")
            [toast] = notified(app, "not a GGUF file")
            assert toast.count("bad.gguf") == 1, toast
            assert text_of(screen.query_one("#model-state")).count("bad.gguf") == 1
            # a quantized V cache without flash attention: the Models screen's own controls are named
            [bundled] = [k for k in screen.rows if "SmolLM2" in k]
            table.move_cursor(row=table.get_row_index(bundled))
            await wait_until(pilot, lambda: screen.current is screen.rows[bundled], what="the row")
            screen.query_one("#cache_type", Select).value = "q8_0"
            screen.query_one("#flash_attn", Select).value = "off"
            await pilot.press("ctrl+l")
            await wait_until(pilot, lambda: bool(notified(app, "flash attention")), what="the refusal")
            [toast] = notified(app, "flash attention")
            assert "set “Flash attention” to auto or on (Models, F4)" in toast and "--" not in toast
            assert "“Flash attention”" in text_of(screen.query_one("#model-state"))
            # a context the form cannot take: its field is named, not --ctx
            screen.query_one("#flash_attn", Select).value = "auto"
            screen.query_one("#ctx", Input).value = "-5"
            await pilot.press("ctrl+l")
            await wait_until(pilot, lambda: "must be positive" in text_of(screen.query_one("#model-state")))
            assert "“Context” (Models, F4)" in text_of(screen.query_one("#model-state"))
            # "Memory check" off is --no-memory-check, remembered for this file like the rest
            screen.query_one("#ctx", Input).value = ""
            screen.query_one("#cache_type", Select).value = "f16"
            screen.query_one("#check_memory", Select).value = "off"
            await pilot.press("ctrl+l")
            await wait_until(pilot, lambda: app.model_status.state == "ready", what="the load")
            assert app.ws.saved_load_settings(Path(bundled)).get("check_memory") is False

    try:
        asyncio.run(run())
    finally:
        app.engine.close()


# -- 14: keys ----------------------------------------------------------------------------------


def test_f8_is_in_the_footer_and_f1_lists_the_screens_in_order(cattery_home: Path) -> None:
    from textual.widgets._footer import FooterKey

    app = bare_app()

    async def run() -> None:
        async with app.run_test(size=(130, 30)) as pilot:
            for mode in ["chat", *OTHER_SCREENS]:
                screen = await goto(pilot, app, mode)
                keys = [k.key for k in screen.query(FooterKey)]
                assert "f8" in keys, (mode, keys)
                # the screen's own keys first, then F1…F8 in order (a text box binds F6 and F7 itself:
                # Textual listed the app's F6 and F7 first, where the box's were)
                fkeys = [k for k in keys if re.fullmatch(r"f\d+", k)]
                assert fkeys == [f"f{n}" for n in range(1, 9)], (mode, keys)
                assert keys.index("f1") == len(keys) - 8, (mode, keys)
            await pilot.press("f1")
            await wait_until(pilot, lambda: type(app.screen).__name__ == "HelpScreen", what="the help")
            table = app.screen.query(DataTable).first()
            shown = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
            fkeys = [k for k in shown if re.fullmatch(r"F\d+", k)]
            assert fkeys[:8] == [f"F{n}" for n in range(1, 9)], shown

    asyncio.run(run())


# -- 14: small terminals ---------------------------------------------------------------------------

MIN_WIDTH = {Select: 12, Input: 10}


def visible(app: Any, widget: Any) -> Any:
    """The part of the widget on screen (above the footer)."""
    geometry = app.screen.find_widget(widget)
    return geometry.region.intersection(geometry.clip)


def seen_enough(part: Any, region: Any) -> bool:
    """Enough of a widget is on screen to use it: all of a one-line control, three lines of a list."""
    return part.height >= min(region.height, 3) and part.width >= min(region.width, 12)


async def settled_view(pilot: Any, app: Any, widget: Any, deadline: float = 15.0) -> Any:
    """What is on screen of the widget once scrolling has settled (a scroll into view is animated)."""
    import time

    start = time.monotonic()
    part = visible(app, widget)
    while not seen_enough(part, widget.region) and time.monotonic() - start < deadline:
        await pilot.pause(0.05)
        part = visible(app, widget)
    return part


async def tab_through(pilot: Any, app: Any, limit: int = 60) -> list[Any]:
    """Every widget Tab reaches, once each, in order."""
    seen: list[Any] = []
    for _ in range(limit):
        await pilot.press("tab")
        await pilot.pause()
        focused = app.focused
        if focused is None or focused in seen:
            break
        seen.append(focused)
    return seen


@pytest.mark.parametrize("size", [*SMALL, SIZE], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.slow
def test_every_control_of_every_screen_can_be_reached_and_seen(cattery_home: Path, size: tuple[int, int]) -> None:
    app = bare_app()
    problems: list[str] = []

    async def run() -> None:
        async with app.run_test(size=size) as pilot:
            for mode in OTHER_SCREENS:
                screen = await goto(pilot, app, mode)
                if mode == "characters":
                    await wait_until(pilot, lambda s=screen: len(s.characters) >= 2, what="the cards")
                reached = await tab_through(pilot, app)
                assert reached, mode
                for widget in reached:
                    app.screen.set_focus(widget)  # scrolls it into view (animated: polled below)
                    part = await settled_view(pilot, app, widget)
                    name = f"{mode} {widget!r} at {size}"
                    if not seen_enough(part, widget.region):
                        problems.append(f"{name}: only {part} of {widget.region} is on screen")
                    for kind, least in MIN_WIDTH.items():
                        if isinstance(widget, kind) and part.width < least:
                            problems.append(f"{name}: {part.width} columns wide")
                    if part.bottom > size[1] - 1:
                        problems.append(f"{name}: under the footer")
            # The Models screen's details and load settings are there, under the list, when scrolled to.
            screen = await goto(pilot, app, "models")
            await wait_until(pilot, lambda: bool(screen.rows) and screen.current is not None, what="the models")
            for part in ("#model-facts", "#load-form"):
                widget = screen.query_one(part)
                widget.scroll_visible(animate=False)
                if not seen_enough(await settled_view(pilot, app, widget), widget.region):
                    problems.append(f"models {part} at {size}: cannot be brought on screen ({widget.region})")
            assert "parameters" in text_of(screen.query_one("#model-facts"))

    asyncio.run(run())
    assert not problems, "\n".join(problems)


def label_fits(label: Label) -> bool:
    text = str(label.render())
    width, height = label.content_region.width, label.content_region.height
    return width > 0 and len(Content(text).wrap(width)) <= height and all(len(word) <= width for word in text.split())


@pytest.mark.parametrize("size", [SIZE, *SMALL], ids=lambda s: f"{s[0]}x{s[1]}")
def test_settings_and_workshop_labels_are_never_cut(cattery_home: Path, size: tuple[int, int]) -> None:
    app = bare_app()

    async def run() -> None:
        async with app.run_test(size=size) as pilot:
            for mode in ("settings", "workshop", "models"):
                screen = await goto(pilot, app, mode)
                labels = list(screen.query(Label))
                assert labels
                cut = [str(label.render()) for label in labels if label.display and not label_fits(label)]
                assert not cut, f"{mode} at {size}: cut labels {cut}"

    asyncio.run(run())


# The widest and the smallest: a dropdown's keys do not change with the size, only whether its list
# has room to open (the control walk above checks every control at 60x16 too).
@pytest.mark.parametrize("size", [SIZE, SMALL[0]], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.slow
def test_dropdowns_open_move_and_close_from_the_keyboard(cattery_home: Path, size: tuple[int, int]) -> None:
    app = bare_app()

    async def run() -> None:
        async with app.run_test(size=size) as pilot:
            for mode, ids in (("settings", ["preset", "theme", "images"]), ("workshop", ["quant-type"])):
                screen = await goto(pilot, app, mode)
                reached = await tab_through(pilot, app)
                for sid in ids:
                    select = screen.query_one(f"#{sid}", Select)
                    assert select in reached, f"Tab never reaches #{sid} on {mode}"
                    app.screen.set_focus(None)
                    await wait_until(pilot, lambda: app.focused is None, what="no focus")
                    current = select.query_one("SelectCurrent")
                    blurred = current.styles.background
                    select.focus()
                    # the focused dropdown looks focused (a compact one has no border to show it)
                    await wait_until(
                        pilot,
                        lambda c=current, s=select, b=blurred: app.focused is s and c.styles.background != b,
                        what="the focus shown",
                    )
                    first = select.value
                    await pilot.press("enter")
                    await wait_until(pilot, lambda s=select: s.expanded, what=f"#{sid} open")
                    assert visible(app, select.query_one("SelectOverlay")).height >= 2
                    await pilot.press("down", "enter")
                    await wait_until(pilot, lambda s=select: not s.expanded, what=f"#{sid} closed")
                    assert select.value != first and app.focused is select
                    await pilot.press("space")
                    await wait_until(pilot, lambda s=select: s.expanded, what=f"#{sid} open by space")
                    chosen = select.value
                    await pilot.press("up", "escape")
                    await wait_until(pilot, lambda s=select: not s.expanded, what=f"#{sid} closed by Esc")
                    assert select.value == chosen and app.focused is select
                    if mode == "settings" and sid == "theme":
                        select.value = first  # the theme is applied only on Save; leave it as it was

    asyncio.run(run())


# -- 12: the Characters screen follows what happens beside it --------------------------------------


def chats_line(screen: Any, ref: str) -> str:
    from app.tui.screens.characters import CharacterItem

    for item in screen.query(CharacterItem):
        if item.character.entry.ref == ref:
            return item.source_line()
    return ""


def test_characters_screen_follows_new_chats_and_command_line_imports(cattery_home: Path, tmp_path: Path) -> None:
    app = bare_app()
    mira = tmp_path / "mira.json"
    mira.write_text(json.dumps(v2("Mira")), encoding="utf-8")

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await goto(pilot, app, "characters")
            await wait_until(pilot, lambda: len(screen.characters) == 2, what="the cards")
            lv = screen.query_one("#char-list", ListView)
            lv.focus()
            lv.index = [c.entry.ref for c in screen.characters].index("bundled:narrator")
            await wait_until(
                pilot, lambda: screen.current is not None and screen.current.entry.ref == "bundled:narrator"
            )
            assert "no chats yet" in text_of(screen.query_one("#char-meta"))
            assert "no chats yet" in chats_line(screen, "bundled:narrator")
            await pilot.press("ctrl+n")  # a new chat with the Narrator
            await wait_until(pilot, lambda: app.current_mode == "chat", what="the chat")
            await goto(pilot, app, "characters")
            await wait_until(pilot, lambda: "1 chat" in text_of(screen.query_one("#char-meta")), what="the count")
            assert "1 chat" in chats_line(screen, "bundled:narrator")
            # `cattery cards import` beside the app, while the screen is shown
            done = await asyncio.to_thread(run_cattery, "cards", "import", str(FIXTURES / "cards" / "Seraphina.png"))
            assert done.returncode == 0, done.stderr
            await wait_until(pilot, lambda: "Seraphina" in [c.entry.name for c in screen.characters], what="Seraphina")
            # and while another screen is: it is there when the screen is shown again
            await goto(pilot, app, "chats")
            done = await asyncio.to_thread(run_cattery, "cards", "import", str(mira))
            assert done.returncode == 0, done.stderr
            await goto(pilot, app, "characters")
            await wait_until(pilot, lambda: "Mira" in [c.entry.name for c in screen.characters], what="Mira")

    asyncio.run(run())


# -- duplicate names told apart ----------------------------------------------------------------------


def test_namesakes_are_told_apart_by_creator_then_version_then_folder() -> None:
    from app.session.namesakes import Namesake, tell_apart

    people = [
        Namesake("library:sera", "Seraphina", "Alice", "1", "sera"),
        Namesake("library:sera-2", "Seraphina", "Bob", "1", "sera-2"),
        Namesake("library:mira", "Mira", "tests", "1", "mira"),
    ]
    assert tell_apart(people) == {
        "library:sera": "Seraphina (by Alice)",
        "library:sera-2": "Seraphina (by Bob)",
        "library:mira": "Mira",
    }
    same_creator = [Namesake("a", "Mira", "tests", "1", "mira"), Namesake("b", "mira", "tests", "v2", "mira-2")]
    assert tell_apart(same_creator) == {"a": "Mira (v1)", "b": "mira (v2)"}
    twins = [Namesake("a", "Mochi", "x", "1", "bundled"), Namesake("b", "Mochi", "x", "1", "mochi")]
    assert tell_apart(twins) == {"a": "Mochi (bundled)", "b": "Mochi (mochi)"}


def test_two_cards_of_one_name_are_told_apart_in_lists_and_the_chat_title(cattery_home: Path, tmp_path: Path) -> None:
    from app.cards.read import read_card
    from app.session.chat import start_session
    from app.session.workspace import Workspace

    ws = Workspace()
    refs = []
    for creator in ("Alice", "Bob"):
        path = tmp_path / f"{creator}.json"
        path.write_text(json.dumps(v2("Seraphina", creator=creator)), encoding="utf-8")
        refs.append(f"library:{ws.cards.add(read_card(path)).slug}")
    chat_ids = [start_session(ws, ref).chat_id for ref in refs]
    app = bare_app()

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await goto(pilot, app, "characters")
            await wait_until(pilot, lambda: len(screen.characters) == 4, what="the cards")
            names = {str(label.render()) for label in screen.query(".char-name")}
            assert {"Seraphina (by Alice)", "Seraphina (by Bob)", "Mochi", "The Narrator"} <= names, names
            chats = await goto(pilot, app, "chats")
            chats.show_all = True
            chats.refresh_table()
            table = chats.query_one("#chat-table", DataTable)
            shown = {str(table.get_row_at(i)[1]) for i in range(table.row_count)}
            assert {"Seraphina (by Alice)", "Seraphina (by Bob)"} <= shown, shown
            # the chat's title says which Seraphina it is
            app.open_chat(chat_ids[1])
            await wait_until(pilot, lambda: app.current_mode == "chat", what="the chat")
            title = app.screen.query_one("#chat-title")
            await wait_until(pilot, lambda: "Seraphina (by Bob) · " in text_of(title), what="the title")

    asyncio.run(run())


@pytest.mark.parametrize("size", SMALL, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dialogs_fit_a_small_terminal(cattery_home: Path, size: tuple[int, int]) -> None:
    from app.tui.screens.dialogs import AskScreen, ConfirmScreen, EditScreen

    app = bare_app()

    async def run() -> None:
        async with app.run_test(size=size) as pilot:
            await goto(pilot, app, "characters")
            long = "Delete 'a chat with a rather long title from last week' and its 120 messages?"
            for dialog, parts in (
                (AskScreen("Import a character card", placeholder="~/card.png", path=True), ["Input", ".hint"]),
                (ConfirmScreen(long, "Delete"), [".dialog-title", "#yes", "#no"]),
                (EditScreen("Edit Mochi's message", "line\n" * 40), ["TextArea", "#save", "#cancel"]),
            ):
                app.push_screen(dialog)
                await wait_until(pilot, lambda d=dialog: app.screen is d and d.is_mounted, what="the dialog")
                for part in parts:
                    widget = dialog.query_one(part)
                    shown = await settled_view(pilot, app, widget)
                    name = type(dialog).__name__
                    assert shown == widget.region, f"{name} {part} at {size}: {shown} of {widget.region}"
                title = dialog.query(".dialog-title")
                assert all(label_fits(t) for t in title), f"{type(dialog).__name__}: its question is cut"
                dialog.dismiss(None)
                await wait_until(pilot, lambda d=dialog: app.screen is not d, what="the dialog closed")

    asyncio.run(run())
