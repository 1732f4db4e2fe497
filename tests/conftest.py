"""Shared fixtures: the real bundled model, one real engine per test session, a private CATTERY_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine.engine import Engine
from app.engine.options import LoadOptions, SamplerSettings
from app.hub.bundled import find_bundled_model, missing_model_message
from app.session.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent
# Real files from other apps (origin and license in tests/fixtures/README.md): never read from
# outside the repository, so a lone clone passes.
FIXTURES = ROOT / "tests" / "fixtures"
# How long a test waits for something that will happen (a model loaded, a reply written, a
# child process up): generous, because a loaded machine (the suite on two busy cores) is
# slower, never different. Every wait polls, so a fast machine never pays it.
DEADLINE = float(os.environ.get("CATTERY_TEST_DEADLINE", "300"))

# Nothing in a test may reach the internet or the user's own Hugging Face cache: the hub is
# a closed port on loopback unless a test starts its own (tests/hub_server.py), and the cache
# is an empty folder of this run. Set before anything imports huggingface_hub.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="cattery-test-hf-")
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("HF_TOKEN", None)
# A bug reaching the CLI's last-resort handler raises as it is (in this process and in every
# `cattery` child), so tests see the real exception rather than "internal error".
os.environ["CATTERY_DEBUG"] = "1"


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = find_bundled_model()
    if path is None:
        pytest.fail(missing_model_message())
    return path


@pytest.fixture(scope="session")
def engine(model_path: Path) -> Iterator[Engine]:
    eng = Engine()
    eng.load(model_path, LoadOptions(ctx=2048, threads=2, batch=256))
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def f32_engine(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The bundled model dequantized to F32 (made once per run), for exactness tests."""
    from tests.gguf_files import dequantized_copy

    path = dequantized_copy(model_path, tmp_path_factory.mktemp("f32") / "smollm2-f32.gguf")
    eng = Engine()
    eng.load(path, LoadOptions(ctx=1024, threads=2, batch=256))
    yield eng
    eng.close()


@pytest.fixture
def greedy() -> SamplerSettings:
    return SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=48)


@pytest.fixture
def cattery_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CATTERY_HOME", str(home))
    return home


@pytest.fixture
def ws(cattery_home: Path) -> Iterator[Workspace]:
    """A workspace on a fresh CATTERY_HOME: settings, paths, the chat store and the card library."""
    w = Workspace()
    yield w
    w.close()


def run_cattery(
    *args: str,
    input: str | None = None,
    home: Path | None = None,
    timeout: float = 2 * DEADLINE,  # a whole command (a model loaded, several replies), not one event
    env: dict[str, str] | None = None,
    preexec_fn: object = None,
    cwd: Path | None = None,  # another folder, as a user in another terminal tab would start it
) -> subprocess.CompletedProcess[str]:
    """Run the real `cattery` entry point in a child process, as a user's shell would."""
    env = {**os.environ, **(env or {})}
    if home is not None:
        env["CATTERY_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd or ROOT,
        preexec_fn=preexec_fn,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def hub(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The test hub on loopback (tests/hub_server.py), with the tests' repos, for one test module."""
    from tests.hub_server import build_test_hub

    server = build_test_hub(model_path, tmp_path_factory.mktemp("hub-files")).start()
    yield server
    server.stop()
