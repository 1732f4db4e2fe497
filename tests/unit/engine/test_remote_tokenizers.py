"""Issue 19: counting a remote engine's tokens without the server's help, and the served model's own
template as the prompt format.

A plain OpenAI-compatible server has no tokenize endpoint: the window is counted with a local
tokenizer of the served model, a GGUF or a Hugging Face tokenizer.json (from a folder, or fetched
from the model's hub repo, the test hub on loopback). The tokenizer.json here is the bundled model's
own, written by `converters.unpack.unpack_tokenizer`, so its counts can be checked against llama.cpp's.
The servers are loopback stand-ins (tests/remote_fakes.py) that answer as those servers do.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from app.engine.engine import Engine
from app.engine.hf_vocab import JsonVocab
from app.engine.options import SamplerSettings
from app.engine.remote import RemoteEngine
from app.errors import CatteryError
from converters.unpack import unpack_tokenizer
from tests.conftest import run_cattery
from tests.hub_server import TOKENIZER
from tests.remote_fakes import Fake, llama_server, piece, stream_events

TEXTS = ["Hello world, 12345 cats!", "<|im_start|>user\nhi<|im_end|>\n", " x  y\n\tz", "naïve café ☕ 日本語"]


@pytest.fixture(scope="module")
def tokenizer_dir(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack_tokenizer(model_path, tmp_path_factory.mktemp("tok"))


def openai_only(seen: list[dict[str, object]]) -> Fake:
    """An OpenAI-compatible server with /v1/models and /v1/completions only (no tokenizer, no props)."""

    def completions(h: BaseHTTPRequestHandler) -> None:
        seen.append(h.body)  # type: ignore[attr-defined]
        stream_events([piece("Fine"), piece(".", "stop"), b"data: [DONE]\n\n"])(h)

    return Fake({"/v1/completions": completions})


def test_a_tokenizer_json_counts_as_llama_cpp_does(tokenizer_dir: Path, engine: Engine) -> None:
    vocab = JsonVocab(tokenizer_dir)
    for text in TEXTS:
        assert vocab.tokenize(text) == engine.segment_tokenize(text), text
        assert vocab.detokenize(vocab.tokenize(text)) == text
    assert (vocab.bos_token, vocab.add_bos) == (engine.bos_token, engine.add_bos) == (1, False)
    assert vocab.config.chat_template == engine.info.chat_template
    assert vocab.config.eos_token == "<|im_end|>" and vocab.eos_token == 2


def test_a_server_without_a_tokenizer_counts_with_a_tokenizer_json_and_uses_its_template(
    tokenizer_dir: Path, engine: Engine, ws
) -> None:
    seen: list[dict[str, object]] = []
    fake = openai_only(seen)
    try:
        eng = RemoteEngine(fake.url, n_ctx=2048, tokenizer=tokenizer_dir / "tokenizer.json")
        report = eng.connect()
        assert report.kind == "openai" and report.tokenizer == "the local tokenizer.json of tok0"
        assert any("window's counts are estimates" in w for w in report.warnings)
        for text in TEXTS:
            assert eng.segment_tokenize(text) == engine.segment_tokenize(text)
        # The served model's template (tokenizer_config.json's) is the `gguf` format, rendered by Cattery.
        choice = ws.chat_format(None, eng.info)
        assert choice.name == "gguf" and choice.why == "GGUF chat template"
        assert eng.info.eos_token == "<|im_end|>"
        # ban_eos: OpenAI's API has no ignore_eos; a bias of -100 on the EOS does it.
        gen = eng.generate([5, 6], SamplerSettings(max_tokens=4, ban_eos=True), text="Hi")
        assert gen.result() == "Fine."
        assert seen[-1]["logit_bias"] == {"2": -100} and seen[-1]["prompt"] == "Hi"
        gen = eng.generate([5, 6], SamplerSettings(max_tokens=4), text="Hi")
        gen.result()
        assert "logit_bias" not in seen[-1]
        eng.close()
    finally:
        fake.close()


def test_bad_tokenizer_files_are_one_line(tmp_path: Path) -> None:
    cases = {
        "missing": tmp_path / "nope" / "tokenizer.json",
        "garbage": tmp_path / "garbage.json",
        "not a tokenizer": tmp_path / "other.json",
    }
    cases["garbage"].write_bytes(b"\x00\xffnot json")
    cases["not a tokenizer"].write_text(json.dumps({"model": {"type": "Nope"}}))
    for what, path in cases.items():
        with pytest.raises(CatteryError) as info:
            JsonVocab(path)
        line = str(info.value)
        assert "\n" not in line and str(path) in line, what


def test_a_hub_repos_tokenizer_json_is_fetched_once_and_counts_the_window(
    hub, tmp_path: Path, cattery_home: Path, engine: Engine
) -> None:
    """`--engine-tokenizer owner/repo`: the repo's tokenizer.json and tokenizer_config.json come into the
    Hugging Face cache (no weights), and the connection test counts with them."""
    seen: list[dict[str, object]] = []
    fake = openai_only(seen)
    env = {
        "HF_ENDPOINT": hub.url,  # type: ignore[attr-defined]
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": "",
        "HF_HUB_OFFLINE": "0",
    }
    try:
        args = ("engines", "test", fake.url, "--engine-tokenizer", TOKENIZER, "--ctx", "2048", "--json")
        r = run_cattery(*args, env=env, home=cattery_home)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["server"] == "openai" and out["tokenizer"] == f"the local tokenizer.json of {TOKENIZER}"
        assert out["template"] == "the local tokenizer's"
        cached = list((tmp_path / "hf" / "hub").glob("models--cattery-test--tokenizer-only/snapshots/*/*"))
        assert sorted(p.name for p in cached) == ["tokenizer.json", "tokenizer_config.json"]
        # Offline, from the cache.
        r = run_cattery(
            *args, env={**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}, home=cattery_home
        )
        assert r.returncode == 0, r.stderr
        # A repo without a tokenizer.json: one line saying what to name instead.
        r = run_cattery(
            "engines", "test", fake.url, "--engine-tokenizer", "other/Nothing-GGUF", env=env, home=cattery_home
        )
        assert r.returncode != 0 and "has no tokenizer.json" in r.stderr and "Traceback" not in r.stderr
    finally:
        fake.close()


def test_llama_servers_template_is_the_gguf_format_and_formats_lint_checks_it(
    engine: Engine, cattery_home: Path
) -> None:
    """llama-server's /props carries the served model's chat template: `cattery formats lint --engine`
    checks it against the server's own tokenizer, as a chat through it would use them."""
    fake = llama_server(engine, ["ok"])
    try:
        eng = RemoteEngine(fake.url)
        eng.connect()
        assert eng.info.chat_template == engine.info.chat_template and eng.info.bos_token == "<|im_start|>"
        eng.close()
        r = run_cattery("formats", "lint", "--engine", fake.url, home=cattery_home)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"format gguf (GGUF chat template) with remote llama-server at {fake.url}: no problems found" in r.stdout
        r = run_cattery("formats", "lint", "llama3", "--engine", fake.url, home=cattery_home)
        assert r.returncode == 1 and "format llama3 (chosen)" in r.stdout  # llama3's markers: not this vocabulary
    finally:
        fake.close()
