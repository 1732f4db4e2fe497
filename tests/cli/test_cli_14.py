"""Issue 14, the command line and the core: paths remembered from any folder, a hub that cannot be
reached, `prompt` on exported and saved chats, one model resolver for every command, an unpack
that leaves nothing when interrupted, and near names for a mistyped format.

Everything runs the real `cattery` in child processes (tests/conftest.py run_cattery) on the
bundled model or small models made here; the hub is a port on loopback that is closed, or a
name that cannot resolve: nothing reaches the internet.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

from app.engine.engine import Engine
from tests.conftest import DEADLINE, ROOT, run_cattery

BUNDLED = "SmolLM2-135M-Instruct.Q4_1"


def run_in(cwd: Path, *args: str, home: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`cattery` started from another folder, as a user in another terminal tab would."""
    return run_cattery(*args, input=input, home=home, timeout=DEADLINE, cwd=cwd)


def error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The one line a failure prints (and nothing that looks like a traceback)."""
    assert r.returncode != 0, r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("cattery: error: ") and "Traceback" not in r.stderr
    return lines[0]


def settings(home: Path) -> dict:
    return tomllib.loads((home / "config" / "settings.toml").read_text())


def write_settings(home: Path, text: str) -> None:
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "settings.toml").write_text(text)


@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of models holding `tiny.gguf`: a small llama with random weights, converted here."""
    from converters.hf_to_gguf import convert
    from tests.hf_fixtures import random_llama

    root = tmp_path_factory.mktemp("tiny-library")
    (root / "models").mkdir()
    convert(random_llama(root / "hf"), root / "models" / "tiny.gguf", outtype="f32")
    return root / "models"


# -- 6. paths remembered in the settings -------------------------------------------------------


def test_a_model_given_by_a_relative_path_is_remembered_from_any_folder(
    model_path: Path, tmp_path: Path, cattery_home: Path
) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "quants").mkdir(parents=True)
    elsewhere.mkdir()
    model = work / "quants" / "smol.Q4_K_M.gguf"
    model.symlink_to(model_path)
    r = run_in(
        work, "chat", "--plain", "--model", "quants/smol.Q4_K_M.gguf", "--temp", "0", "-n", "4", input="Hi\n",
        home=cattery_home,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert settings(cattery_home)["model"]["last_used"] == str(model)  # absolute, not "quants/…"
    # From another folder, the remembered model is the one used: not a quiet switch to the bundled one.
    r = run_in(elsewhere, "prompt", "--json", "--card", "none", home=cattery_home)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == str(model)
    assert "smol.Q4_K_M.gguf" in run_in(elsewhere, "chat", "--plain", "-n", "2", input="", home=cattery_home).stderr


def test_a_remembered_model_that_is_gone_is_one_line_never_another_model(tmp_path: Path, cattery_home: Path) -> None:
    gone = tmp_path / "moved" / "smol.Q4_K_M.gguf"
    write_settings(cattery_home, f'[model]\nlast_used = "{gone}"\n')
    for args in (["chat", "--plain"], ["prompt"], ["formats", "lint"]):
        line = error_line(run_in(tmp_path, *args, input="Hi\n", home=cattery_home))
        assert f"the last used model {gone}" in line and "--model M" in line and "models list" in line, args
    # What an older Cattery stored, relative to a folder no one remembers, is named the same way.
    write_settings(cattery_home, '[model]\nlast_used = "quants/smol.Q4_K_M.gguf"\n')
    line = error_line(run_in(tmp_path, "chat", "--plain", input="Hi\n", home=cattery_home))
    assert "the last used model quants/smol.Q4_K_M.gguf" in line and "not found" in line
    # -m still works, and a chat with it is remembered in the gone one's place.
    r = run_in(tmp_path, "chat", "--plain", "-m", BUNDLED, "-n", "2", input="", home=cattery_home)
    assert r.returncode == 0, r.stderr
    assert settings(cattery_home)["model"]["last_used"].endswith(f"{BUNDLED}.gguf")


def test_the_app_names_the_remembered_model_that_is_gone(tmp_path: Path, cattery_home: Path) -> None:
    """The full-screen app opens all the same; its model line says which model is gone (no silent switch)."""
    import asyncio

    from tests.tui_helpers import make_app, wait_until

    gone = tmp_path / "moved" / "kitten.Q4_K_M.gguf"
    write_settings(cattery_home, f'[model]\nlast_used = "{gone}"\n')

    async def run() -> None:
        app = make_app()  # no engine given: the app picks and loads the model itself, as `cattery` does
        async with app.run_test(size=(110, 34)) as pilot:
            await wait_until(pilot, lambda: app.model_status.state in ("failed", "ready"), what="the model")
            assert app.model_status.state == "failed" and app.model_status.path is None
            assert f"the last used model {gone}" in (app.model_status.error or "")
            assert "Models screen (F4)" in app.model_status.error and "--model" not in app.model_status.error
            assert not app.engine.loaded  # the bundled model was not loaded in its place

    asyncio.run(run())


def test_folders_in_the_settings_are_absolute_or_relative_to_the_settings_file(
    tiny_library: Path, tmp_path: Path, cattery_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from app.session.workspace import Workspace

    (tmp_path / "work" / "quants").mkdir(parents=True)
    shutil.copyfile(tiny_library / "tiny.gguf", tmp_path / "work" / "quants" / "kitten.gguf")
    monkeypatch.chdir(tmp_path / "work")
    assert Workspace().add_model_dir("quants") is None  # as the Models screen adds a folder typed as "quants"
    assert settings(cattery_home)["model"]["dirs"] == [str(tmp_path / "work" / "quants")]
    monkeypatch.chdir(tmp_path)
    assert Workspace().resolve_model("kitten") == tmp_path / "work" / "quants" / "kitten.gguf"
    # A relative folder written by hand is relative to the settings file's folder, from anywhere.
    (cattery_home / "config" / "mine").mkdir()
    shutil.copyfile(tiny_library / "tiny.gguf", cattery_home / "config" / "mine" / "tabby.gguf")
    write_settings(cattery_home, '[model]\ndirs = ["mine"]\n')
    assert Workspace().resolve_model("tabby") == cattery_home / "config" / "mine" / "tabby.gguf"


# -- 7. a hub that cannot be reached ---------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is: a connection to it is refused


@pytest.mark.parametrize("endpoint", ["refused", "http://nonexistent.invalid"])
@pytest.mark.parametrize("command", [["models", "search", "mythomax"], ["models", "files", "a/b"]])
def test_a_hub_that_cannot_be_reached_is_one_line_with_the_offline_hint(
    endpoint: str, command: list[str], cattery_home: Path
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}" if endpoint == "refused" else endpoint
    r = run_cattery(*command, env={"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0"}, home=cattery_home)
    line = error_line(r)
    why = "refused the connection" if endpoint == "refused" else "nonexistent.invalid does not resolve"
    assert "cannot reach the hub" in line and why in line and "HF_HUB_OFFLINE=1" in line
    assert "Retry" not in r.stderr


@pytest.fixture
def hanging_up_hub() -> Iterator[tuple[str, list[int]]]:
    """A server on loopback that takes each connection and closes it at once: (its URL, connections)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    count: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            count.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", count
    stop.set()
    thread.join()
    server.close()


def test_search_asks_once_and_fails_rather_than_retrying(
    hanging_up_hub: tuple[str, list[int]], cattery_home: Path
) -> None:
    url, connections = hanging_up_hub
    r = run_cattery("models", "search", "llama", env={"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0"}, home=cattery_home)
    line = error_line(r)
    assert "cannot reach the hub" in line and "HF_HUB_OFFLINE=1" in line
    assert len(connections) == 1  # one try: no round of retries with waits between them


# -- 9. `cattery prompt` on an exported chat and on a saved one -----------------------------------------


ST_CHAT = [
    {"user_name": "Anon", "character_name": "Mochi", "create_date": "2024-01-01T00:00:00.000Z", "chat_metadata": {}},
    {"name": "Mochi", "is_user": False, "mes": "Hello, Anon. Nyan", "swipes": ["Hello, Anon. Nyan", "Hi!"]},
    {"name": "Anon", "is_user": True, "mes": "What is an enzyme?"},
    {"name": "Mochi", "is_user": False, "mes": "A protein that speeds up a reaction. Nyan", "swipe_id": 0},
    {"name": "Anon", "is_user": True, "mes": "And a ribozyme?"},
]


def _st_file(path: Path, lines: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_prompt_takes_what_chats_export_writes(tmp_path: Path, cattery_home: Path) -> None:
    source = _st_file(tmp_path / "st.jsonl", ST_CHAT)
    assert run_cattery("chats", "import", str(source), home=cattery_home).returncode == 0
    exported = tmp_path / "chat.jsonl"
    assert run_cattery("chats", "export", "1", "-o", str(exported), home=cattery_home).returncode == 0
    r = run_cattery("prompt", "--history", str(exported), "--json", home=cattery_home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # Without -m: the model a chat would use, its own template, and token counts.
    assert out["format"] == "gguf" and out["model"].endswith(f"{BUNDLED}.gguf")
    assert out["tokens"] > out["pinned_tokens"] > 0 and out["kept"] == [0, 1, 2, 3]
    assert "Mochi" in out["segments"][0]["text"]  # the file's character, found in the library
    assert out["text"].endswith("<|im_start|>user\nAnd a ribozyme?<|im_end|>\n<|im_start|>assistant\n")
    # The saved chat gives the very same prompt.
    saved = run_cattery("prompt", "--chat", "1", "--json", home=cattery_home)
    assert saved.returncode == 0, saved.stderr
    assert json.loads(saved.stdout)["text"] == out["text"] and json.loads(saved.stdout)["chat"] == 1
    # A JSON list still works, and a file that is neither is one line.
    (tmp_path / "h.json").write_text(json.dumps([{"role": "user", "content": "Hi"}]))
    assert run_cattery("prompt", "--history", str(tmp_path / "h.json"), home=cattery_home).returncode == 0
    (tmp_path / "bad.jsonl").write_text('{"user_name": "A"}\n{"name": "B", "is_user": 3, "mes": "x"}\n')
    line = error_line(run_cattery("prompt", "--history", str(tmp_path / "bad.jsonl"), home=cattery_home))
    assert "line 2" in line and "is_user" in line
    assert "give one" in error_line(run_cattery("prompt", "--chat", "1", "--history", str(exported), home=cattery_home))
    assert "no chat with that id" in error_line(run_cattery("prompt", "--chat", "99", home=cattery_home))


def test_a_character_the_library_does_not_have_keeps_its_name(tmp_path: Path, cattery_home: Path) -> None:
    lines = [{**ST_CHAT[0], "character_name": "Nobody Here"}, {"name": "Nobody Here", "is_user": False, "mes": "Yo"}]
    r = run_cattery("prompt", "--format", "metharme", "--history", str(_st_file(tmp_path / "c.jsonl", lines)),
                    home=cattery_home)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Mochi" not in r.stdout and r.stdout.endswith("<|model|>Yo<|model|>")


def test_prompt_chat_is_exactly_what_the_next_turn_sends(engine: Engine, cattery_home: Path) -> None:
    """A chat long enough for its window to have moved: `prompt --chat` builds from where it stands."""
    from app.prompt.builder import choose_format
    from app.session.chat import start_session
    from app.session.workspace import Workspace

    ws = Workspace()
    session = start_session(ws, "mochi")
    for i in range(45):
        ws.store.add_message(session.chat_id, "user", f"Question {i}: why do cats purr when they are content?")
        ws.store.add_message(session.chat_id, "assistant", f"Answer {i}: purring is a low hum of happiness. Nyan")
    ws.store.add_message(session.chat_id, "user", "And the last question?")
    session.reload()
    session.attach(engine, choose_format(None, engine.info))
    assert session.builder is not None
    first = session.builder.build(session.history(), n_ctx=engine.n_ctx, reserve=session.reserve, state=session.window)
    session._save_window()  # as a turn does: the window's start is kept with the chat
    assert session.window.start > 0 and first.kept[0] == session.window.start
    # One more exchange: the next turn builds from the saved start, not from the beginning.
    ws.store.add_message(session.chat_id, "assistant", "It was a good one. Nyan")
    ws.store.add_message(session.chat_id, "user", "Thank you!")
    session.reload()
    expected = session.builder.build(
        session.history(), n_ctx=engine.n_ctx, reserve=session.reserve, state=session.window
    )
    ws.close()
    r = run_cattery(
        "prompt", "--chat", str(session.chat_id), "--ctx", str(engine.n_ctx), "--json", "--token-ids",
        home=cattery_home,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["token_ids"] == expected.tokens and out["kept"] == expected.kept and out["dropped"] == expected.dropped
    assert out["n_ctx"] == engine.n_ctx and out["tokens"] == len(expected.tokens or [])


# -- 10. every command that takes a model takes a library name --------------------------------------


def test_every_command_that_takes_a_model_takes_a_library_name(
    tiny_library: Path, tmp_path: Path, cattery_home: Path
) -> None:
    write_settings(cattery_home, f'[model]\ndirs = ["{tiny_library}"]\n')
    (tmp_path / "text.txt").write_text("the cat sat on the mat and purred. " * 80)
    ok = [
        ["unpack", "tiny", "-o", str(tmp_path / "tiny-hf")],
        ["quantize", "tiny", "--type", "Q8_0", "--dry-run"],
        ["eval", "tiny", str(tmp_path / "text.txt"), "--ctx", "128", "--chunks", "1"],
        ["formats", "lint", "chatml", "-m", "tiny"],
        ["models", "info", "tiny"],
        ["prompt", "-m", "tiny", "--card", "none"],
        ["chat", "--plain", "-m", "tiny", "-n", "2", "--card", "none"],
    ]
    for args in ok:
        r = run_cattery(*args, input="", home=cattery_home)
        assert r.returncode in (0, 1), (args, r.stderr)  # lint answers 1 when it has warnings
        assert "no such file" not in r.stderr and "not found" not in r.stderr, (args, r.stderr)
    assert (tmp_path / "tiny-hf" / "config.json").is_file()
    # A quantization of a model given by name goes into the library, not beside a file Cattery does not own.
    r = run_cattery("quantize", "tiny", "--type", "Q8_0", home=cattery_home)
    assert r.returncode == 0, r.stderr
    assert (cattery_home / "data" / "models" / "tiny.Q8_0.gguf").is_file()
    assert not (tiny_library / "tiny.Q8_0.gguf").exists()
    assert "tiny.Q8_0" in run_cattery("models", "list", home=cattery_home).stdout
    r = run_cattery("models", "rm", "tiny.Q8_0", home=cattery_home)
    assert r.returncode == 0, r.stderr
    assert not (cattery_home / "data" / "models" / "tiny.Q8_0.gguf").exists()
    # A name that is nothing is one line that says where names come from.
    line = error_line(run_cattery("unpack", "no-such-model", "-o", str(tmp_path / "x"), home=cattery_home))
    assert "no model of that name in the library" in line and not (tmp_path / "x").exists()
    # convert takes a checkpoint: given a GGUF model, it says what to use instead.
    line = error_line(run_cattery("convert", "tiny", "-o", str(tmp_path / "y.gguf"), home=cattery_home))
    assert "a GGUF model already" in line and "cattery unpack" in line


# -- 11. an interrupted unpack leaves nothing --------------------------------------------------------


def test_ctrl_c_during_unpack_leaves_nothing_under_the_final_name(tmp_path: Path, cattery_home: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out = work / "smol-hf"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "unpack", BUNDLED, "-o", str(out), "--dtype", "F16"],
        cwd=ROOT,
        env={**os.environ, "CATTERY_HOME": str(cattery_home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        # Until the weights are being written: the tokenizer files are written before them.
        while not any(p.name.startswith(".model.safetensors") for p in work.rglob("*")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the unpack never started writing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert not out.exists() and list(work.iterdir()) == []  # no output, no temporary folder


def test_unpack_writes_into_a_new_or_empty_folder_only(tiny_library: Path, tmp_path: Path) -> None:
    from app.errors import CatteryError
    from converters.unpack import unpack

    empty = tmp_path / "empty"
    empty.mkdir()
    assert unpack(tiny_library / "tiny.gguf", empty) == empty and (empty / "model.safetensors").is_file()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(CatteryError, match="is not empty"):
        unpack(tiny_library / "tiny.gguf", tmp_path / "notes")
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["mine.txt"]

    def stop(done: int, *_: object) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        unpack(tiny_library / "tiny.gguf", tmp_path / "stopped", progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes"]


# -- 13. near names, and lint on the format a chat would use ------------------------------------------


def test_a_mistyped_format_suggests_the_near_one(cattery_home: Path) -> None:
    for args in (
        ["chat", "--plain", "--format", "chatmll"],
        ["prompt", "--format", "chatmll"],
        ["formats", "lint", "chatmll"],
    ):
        line = error_line(run_cattery(*args, input="", home=cattery_home))
        assert "unknown prompt format 'chatmll' (did you mean chatml?)" in line, args
    line = error_line(run_cattery("prompt", "--format", "ChatML", home=cattery_home))
    assert "did you mean chatml?" in line
    line = error_line(run_cattery("prompt", "--format", "zzzzzz", home=cattery_home))
    assert "one of " in line and "metharme" in line and "gguf" in line  # nothing near: the known ones


def test_formats_lint_checks_the_format_a_chat_would_use(cattery_home: Path) -> None:
    r = run_cattery("formats", "lint", home=cattery_home)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"format gguf (GGUF chat template) with {BUNDLED}.gguf: no problems found")
    write_settings(cattery_home, '[chat]\nformat = "llama2"\n')
    r = run_cattery("formats", "lint", home=cattery_home)
    assert "format llama2" in r.stdout and f"with {BUNDLED}.gguf" in r.stdout
    assert "'<<SYS>>' is not a special token of this model" in r.stdout  # checked against its tokenizer
