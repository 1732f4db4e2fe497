"""Issue 19: a remote inference server as the engine.

The server is real: llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`)
on the bundled model, on 127.0.0.1. The faults a real server cannot be made to show on demand (a
401, a 503 with Retry-After, a stream cut mid-reply, a server that stops answering, one that sends
garbage) come from small loopback HTTP servers (tests/remote_fakes.py) that answer as those servers do.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from app.engine.engine import Engine
from app.engine.options import SamplerSettings
from app.engine.remote import RemoteEngine
from app.engine.remote_http import RemoteError, RemoteHTTP, check_url
from app.errors import CatteryError
from tests.remote_fakes import Fake, free_port, piece, send_json, stream_events, tokenize_ok

CHATML = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's server on the bundled model: the URL once it answers. Its log goes to a
    file (llama.cpp's load log would fill a pipe nobody reads and stall the server)."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(model_path),
                "--port",
                str(port),
                "--n_ctx",
                "2048",
                "--n_threads",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    http = RemoteHTTP(url, connect_timeout=1, read_timeout=5)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                http.get_json("/v1/models")
                break
            except RemoteError:
                assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
                assert time.monotonic() < deadline, "llama_cpp.server did not start: " + log.read_text()[-2000:]
                time.sleep(0.3)
        yield url
    finally:
        http.close()
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def remote(server: str) -> Iterator[RemoteEngine]:
    eng = RemoteEngine(server, n_ctx=2048)
    eng.connect()
    yield eng
    eng.close()


def greedy(n: int = 24, **kw: object) -> SamplerSettings:
    return SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=n, seed=1, **kw)  # type: ignore[arg-type]


def test_it_finds_what_answers_and_counts_with_the_models_own_vocabulary(remote: RemoteEngine, engine: Engine) -> None:
    report = remote.report
    assert report is not None and report.kind == "llama-cpp-python" and report.n_ctx == 2048
    assert report.model.endswith(".gguf") and "remote llama-cpp-python at http://127.0.0.1:" in report.placement
    for text in ("Hello there", "<|im_start|>user\nHi<|im_end|>", " leading space", "naïve café 🐈"):
        assert remote.segment_tokenize(text) == engine.segment_tokenize(text), text
    assert remote.add_bos == engine.add_bos


def test_a_greedy_reply_is_the_local_engines(remote: RemoteEngine, engine: Engine) -> None:
    """Same model, same prompt, greedy: the server writes what llama.cpp here writes."""
    tokens = engine.tokenize(CHATML, add_bos=engine.add_bos)
    local = engine.generate(tokens, greedy(), stop=["<|im_end|>"]).result()
    gen = remote.generate(tokens, greedy(), stop=["<|im_end|>"], text=CHATML)
    assert gen.result() == local
    assert gen.stats is not None and gen.stats.generated_tokens > 0 and gen.stats.time_to_first_token > 0
    assert gen.stats.finish_reason in ("stop", "length") and gen.stats.prompt_tokens == len(tokens)


def test_stop_strings_seed_and_max_tokens(remote: RemoteEngine) -> None:
    tokens = remote.tokenize(CHATML)
    one = remote.generate(tokens, greedy(40), stop=[","], text=CHATML).result()
    assert "," not in one
    warm = SamplerSettings(temperature=1.0, max_tokens=16, seed=1234)
    a = remote.generate(tokens, warm, text=CHATML).result()
    b = remote.generate(tokens, SamplerSettings(temperature=1.0, max_tokens=16, seed=1234), text=CHATML).result()
    assert a == b  # a seed gives the same reply again
    gen = remote.generate(tokens, greedy(3), text=CHATML)
    gen.result()
    assert gen.stats is not None and gen.stats.finish_reason == "length" and gen.stats.generated_tokens <= 3


def test_a_stop_closes_the_stream_and_the_engine_answers_at_once(remote: RemoteEngine) -> None:
    tokens = remote.tokenize(CHATML)
    gen = remote.generate(tokens, SamplerSettings(temperature=1.0, max_tokens=400, ban_eos=True), text=CHATML)
    pieces = []
    for text in gen:
        pieces.append(text)
        gen.cancel()
    assert gen.stats is not None and gen.stats.finish_reason == "cancelled"
    assert gen.text == "".join(pieces) and gen.stats.generated_tokens < 400
    started = time.perf_counter()
    again = remote.generate(tokens, greedy(4), text=CHATML)
    assert again.result() and time.perf_counter() - started < 20


def test_the_line_chat_through_the_server(server: str, cattery_home: Path) -> None:
    from tests.conftest import run_cattery

    done = run_cattery(
        "chat",
        "--plain",
        "--new",
        "--card",
        "none",
        "--temp",
        "0",
        "-n",
        "16",
        "--format",
        "chatml",
        "--engine",
        server,
        "--ctx",
        "2048",
        input="What is the capital of France?\n/stats\n",
    )
    assert done.returncode == 0, done.stderr
    assert "remote llama-cpp-python at " + server in done.stderr
    assert "Paris" in done.stdout and "tokens counted by the server's" in done.stdout
    listed = json.loads(run_cattery("chats", "list", "--json").stdout)
    assert listed and listed[0]["messages"] == 2


# -- faults, from a loopback server that misbehaves on purpose -------------------------------------


def fake_engine(routes: dict[str, Callable[[BaseHTTPRequestHandler], None]], **kw: object) -> tuple[Fake, RemoteEngine]:
    fake = Fake({"/extras/tokenize": tokenize_ok, **routes})
    eng = RemoteEngine(fake.url, n_ctx=512, **kw)  # type: ignore[arg-type]
    eng.connect()
    return fake, eng


def run_reply(eng: RemoteEngine) -> tuple[str, Exception | None]:
    gen = eng.generate([1, 2, 3], greedy(8), text="abc")
    try:
        gen.result()
    except CatteryError as exc:
        return gen.text, exc
    return gen.text, None


def test_a_stream_cut_mid_reply_keeps_what_came_and_says_so_in_one_line() -> None:
    fake, eng = fake_engine({"/v1/completions": stream_events([piece("Hello"), piece(" there")])})
    try:
        text, err = run_reply(eng)
        assert text == "Hello there" and isinstance(err, RemoteError)
        assert "cut mid-reply" in str(err) and "\n" not in str(err)
    finally:
        eng.close()
        fake.close()


def test_a_server_that_stops_answering_times_out_between_tokens() -> None:
    fake, eng = fake_engine({"/v1/completions": stream_events([piece("Hi")], then="hang")}, read_timeout=0.5)
    try:
        started = time.perf_counter()
        text, err = run_reply(eng)
        assert text == "Hi" and isinstance(err, RemoteError) and "stopped answering" in str(err)
        assert time.perf_counter() - started < 2.5
    finally:
        eng.close()
        fake.close()


@pytest.mark.parametrize(
    ("status", "headers", "words"),
    [
        (401, {}, "check the API key"),
        (403, {}, "check the API key"),
        (429, {"Retry-After": "7"}, "wait 7 s"),
        (503, {}, "busy (503"),
        (500, {}, "failed (500: boom"),
        (404, {}, "has no /v1/completions"),
    ],
)
def test_http_errors_are_one_line_each(status: int, headers: dict[str, str], words: str) -> None:
    fake, eng = fake_engine(
        {"/v1/completions": lambda h: send_json(h, {"error": {"message": "boom"}}, status, headers)}
    )
    try:
        text, err = run_reply(eng)
        assert text == "" and isinstance(err, RemoteError) and words in str(err), str(err)
        assert "\n" not in str(err) and (err.status == status)
    finally:
        eng.close()
        fake.close()


def test_garbage_events_and_error_events_are_refused_in_one_line() -> None:
    for events, words in (
        ([piece("ok"), b"data: {not json\n\n"], "not JSON"),
        ([piece("ok"), b'data: {"error": {"message": "out of memory"}}\n\n'], "failed mid-reply: out of memory"),
        ([b"data: " + b"x" * (2 << 20) + b"\n\n"], "over 1 MiB"),
    ):
        fake, eng = fake_engine({"/v1/completions": stream_events(events)})
        try:
            _, err = run_reply(eng)
            assert isinstance(err, RemoteError) and words in str(err), str(err)
        finally:
            eng.close()
            fake.close()


def test_nothing_answering_and_bad_urls_are_one_line() -> None:
    port = free_port()  # closed again: nothing listens there
    with pytest.raises(RemoteError, match="connection refused"):
        RemoteEngine(f"http://127.0.0.1:{port}", connect_timeout=1).connect()
    with pytest.raises(RemoteError, match="does not resolve"):
        RemoteEngine("http://no-such-host.invalid:8080", connect_timeout=2).connect()
    for bad in ("ftp://x", "localhost:8080", "http://", "http://user:secret@host"):
        with pytest.raises(CatteryError):
            check_url(bad)


def test_the_api_key_is_sent_as_a_bearer_token() -> None:
    seen: list[str | None] = []

    def models(h: BaseHTTPRequestHandler) -> None:
        seen.append(h.headers.get("Authorization"))
        send_json(h, {"data": [{"id": "m"}]})

    fake = Fake({"/v1/models": models, "/extras/tokenize": tokenize_ok})
    try:
        eng = RemoteEngine(fake.url, api_key="sk-test", n_ctx=512)
        eng.connect()
        eng.close()
        assert seen == ["Bearer sk-test"]
    finally:
        fake.close()


def detokenize_ok(h: BaseHTTPRequestHandler) -> None:
    send_json(h, {"text": "".join(chr(t) for t in h.body.get("tokens", []))})  # type: ignore[attr-defined]


def test_the_line_chat_keeps_a_reply_cut_mid_stream_as_stopped(cattery_home: Path) -> None:
    """The server dies mid-reply: one line says so, what came is saved as a stopped reply, the
    user's message stays, and the chat goes on (the next line gets its own answer)."""
    from app.chats.store import ChatStore
    from tests.conftest import run_cattery

    answers = iter([[piece("Hello"), piece(" there")], [piece("Fine.", "stop")]])
    fake = Fake(
        {
            "/extras/tokenize": tokenize_ok,
            "/extras/detokenize": detokenize_ok,
            "/v1/completions": lambda h: stream_events(next(answers))(h),
        }
    )
    try:
        done = run_cattery(
            "chat", "--plain", "--new", "--card", "none", "--format", "chatml", "--ctx", "512",
            "--engine", fake.url, input="Hi\nAnd now?\n",
        )  # fmt: skip
    finally:
        fake.close()
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "cut mid-reply" in line and "kept, marked stopped" in line
    assert "Hello there" in done.stdout and "Fine." in done.stdout
    store = ChatStore(cattery_home / "data" / "chats.sqlite3")
    try:
        chat_id = int(store.get_state("last_chat") or 0)
        msgs = [(m.role, m.state, m.text) for m in store.messages(chat_id)]
    finally:
        store.close()
    assert msgs == [
        ("user", "done", "Hi"),
        ("assistant", "stopped", "Hello there"),
        ("user", "done", "And now?"),
        ("assistant", "done", "Fine."),
    ]


def test_llama_servers_native_protocol(engine: Engine) -> None:
    """llama-server cannot be installed from the package index, so this loopback server speaks its
    protocol as llama.cpp's server README documents it (/props, /tokenize, /detokenize, /completion
    with token ids, cache_prompt, and `timings` on the last event), tokenizing with the bundled
    model's real vocabulary. The client sends token ids, asks for the prompt cache, and reports the
    evaluated count the server gives."""
    seen: list[dict[str, object]] = []

    def props(h: BaseHTTPRequestHandler) -> None:
        send_json(
            h,
            {
                "default_generation_settings": {"n_ctx": 4096},
                "chat_template": "{{ messages }}",
                "build_info": "b6000-abc",
                "model_path": "/models/Cat-llama3-70B.Q4_K_M.gguf",
            },
        )

    def tokenize(h: BaseHTTPRequestHandler) -> None:
        body = h.body  # type: ignore[attr-defined]
        assert body["add_special"] is False and body["parse_special"] is True
        send_json(h, {"tokens": engine.segment_tokenize(body["content"])})

    def detokenize(h: BaseHTTPRequestHandler) -> None:
        send_json(h, {"content": engine.detokenize(h.body["tokens"])})  # type: ignore[attr-defined]

    def completion(h: BaseHTTPRequestHandler) -> None:
        body = h.body  # type: ignore[attr-defined]
        seen.append(body)
        events = [
            {"content": "Red", "stop": False},
            {"content": ", blue", "stop": False},
            {
                "content": "",
                "stop": True,
                "stop_type": "word",
                "stopping_word": "\n",
                "timings": {"prompt_n": 7, "prompt_ms": 12.5, "predicted_n": 2, "predicted_per_second": 40.0},
            },
        ]
        stream_events([b"data: " + json.dumps(e).encode() + b"\n\n" for e in events])(h)

    fake = Fake(
        {
            "/props": props,
            "/v1/models": lambda h: send_json(h, {"data": [{"id": "Cat-llama3-70B.Q4_K_M.gguf"}]}),
            "/tokenize": tokenize,
            "/detokenize": detokenize,
            "/completion": completion,
        }
    )
    try:
        eng = RemoteEngine(fake.url)
        report = eng.connect()
        assert report.kind == "llama-server" and report.n_ctx == 4096 and report.n_ctx_known
        assert report.build == "b6000-abc" and eng.chat_template == "{{ messages }}"
        tokens = eng.tokenize(CHATML)
        assert tokens == engine.tokenize(CHATML, add_bos=False)
        gen = eng.generate(tokens, greedy(16, top_k=5, min_p=0.1), stop=["\n"], text=CHATML)
        assert gen.result() == "Red, blue"
        stats = gen.stats
        assert stats is not None and stats.finish_reason == "stop_string" and stats.stop_string == "\n"
        assert stats.prompt_evaluated == 7 and stats.prompt_reused == len(tokens) - 7
        assert stats.generated_tokens == 2
        [body] = seen
        assert body["prompt"] == tokens and body["cache_prompt"] is True and body["stream"] is True
        assert body["n_predict"] == 16 and body["top_k"] == 5 and body["min_p"] == 0.1 and body["stop"] == ["\n"]
        assert eng.detokenize(tokens) == engine.detokenize(tokens)
        eng.close()
    finally:
        fake.close()


def test_engines_named_in_the_settings(cattery_home: Path) -> None:
    """`[engines.NAME]` in settings.toml: checked like every setting (a bad value is one warning and
    not used), and `--engine NAME` connects with its url, model, key variable and ctx."""
    from app.settings import Settings
    from tests.conftest import run_cattery

    seen: list[str | None] = []

    def models(h: BaseHTTPRequestHandler) -> None:
        seen.append(h.headers.get("Authorization"))
        send_json(h, {"data": [{"id": "m"}]})

    fake = Fake(
        {
            "/v1/models": models,
            "/extras/tokenize": tokenize_ok,
            "/extras/detokenize": detokenize_ok,
            "/v1/completions": stream_events([piece("Hi!", "stop")]),
        }
    )
    settings_file = cattery_home / "config" / "settings.toml"
    settings_file.parent.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(
        f'[engines.box]\nurl = "{fake.url}"\napi_key_env = "BOX_KEY"\nctx = 1024\n'
        '[engines.bad]\nurl = "ftp://nowhere"\n'
        '[engines.leaky]\nurl = "http://me:secret@host:8080"\n'
    )
    try:
        s = Settings.load(settings_file)
        engines = s.section("engines")
        assert set(engines) == {"box"} and engines["box"]["ctx"] == 1024
        assert sum("[engines.bad]" in w or "[engines.leaky]" in w for w in s.warnings) >= 2
        done = run_cattery(
            "chat", "--plain", "--new", "--card", "none", "--format", "chatml", "--engine", "box",
            input="Hello\n/stats\n", env={"BOX_KEY": "sk-box"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "Hi!" in done.stdout and "ctx 1024" in done.stdout and seen[-1] == "Bearer sk-box"
        missing = run_cattery("chat", "--plain", "--engine", "nope", input="Hello\n")
        assert missing.returncode == 2 and "no engine named 'nope'" in missing.stderr and "box" in missing.stderr
        unset = run_cattery("chat", "--plain", "--engine", "box", input="Hello\n", env={"BOX_KEY": ""})
        assert unset.returncode == 2 and "BOX_KEY" in unset.stderr
    finally:
        fake.close()


def test_both_engines_provide_what_a_chat_needs() -> None:
    """One interface, two implementations: the chat core uses nothing the remote engine lacks, and
    `generate` takes the same arguments on both."""
    import inspect

    from app.engine.interface import ChatEngine

    names = {n for n in vars(ChatEngine) if not n.startswith("_")} | set(ChatEngine.__annotations__)
    local, remote = Engine(), RemoteEngine("http://127.0.0.1:9")
    try:
        for cls, instance in ((Engine, local), (RemoteEngine, remote)):
            missing = [n for n in names if not hasattr(cls, n) and n not in vars(instance)]
            assert not missing, (cls.__name__, missing)
        wanted = list(inspect.signature(ChatEngine.generate).parameters)
        assert list(inspect.signature(Engine.generate).parameters) == wanted
        assert list(inspect.signature(RemoteEngine.generate).parameters) == wanted
    finally:
        local.close()
        remote.close()


def test_cattery_engines_lists_and_tests_a_connection(server: str, cattery_home: Path) -> None:
    from tests.conftest import run_cattery

    settings_file = cattery_home / "config" / "settings.toml"
    settings_file.parent.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(f'[engines.local]\nurl = "{server}"\nctx = 2048\n')
    listed = run_cattery("engines")
    assert listed.returncode == 0 and f"local  {server}  (ctx 2048)" in listed.stdout
    tested = run_cattery("engines", "test", "local", "--json")
    assert tested.returncode == 0, tested.stderr
    out = json.loads(tested.stdout)
    assert out["server"] == "llama-cpp-python" and out["ctx"] == 2048 and out["first_token_seconds"] > 0
    said = run_cattery("engines", "test", server)
    assert said.returncode == 0 and "llama-cpp-python serving" in said.stdout and "one-token reply" in said.stdout
    down = run_cattery("engines", "test", "http://127.0.0.1:9")
    assert down.returncode == 2 and "nothing answers at http://127.0.0.1:9" in down.stderr


def test_vllms_protocol(engine: Engine) -> None:
    """vLLM needs a GPU and is not installed here: this loopback server answers as vLLM's OpenAI
    server documents (/v1/models with max_model_len, /tokenize and /detokenize, /v1/completions that
    takes token ids, a stop_reason, and a last event with usage when include_usage is asked)."""
    seen: list[dict[str, object]] = []

    def tokenize(h: BaseHTTPRequestHandler) -> None:
        body = h.body  # type: ignore[attr-defined]
        assert body["model"] == "org/cat-70b" and body["add_special_tokens"] is False
        tokens = engine.segment_tokenize(body["prompt"])
        send_json(h, {"tokens": tokens, "count": len(tokens), "max_model_len": 8192})

    def completions(h: BaseHTTPRequestHandler) -> None:
        seen.append(h.body)  # type: ignore[attr-defined]
        events = [
            {"choices": [{"index": 0, "text": "Red", "finish_reason": None}]},
            {"choices": [{"index": 0, "text": " and blue", "finish_reason": "stop", "stop_reason": "\n"}]},
            {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 3,
                                      "prompt_tokens_details": {"cached_tokens": 24}}},
        ]  # fmt: skip
        stream_events([b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"])(h)

    fake = Fake(
        {
            "/v1/models": lambda h: send_json(h, {"data": [{"id": "org/cat-70b", "max_model_len": 8192}]}),
            "/tokenize": tokenize,
            "/detokenize": lambda h: send_json(h, {"prompt": engine.detokenize(h.body["tokens"])}),  # type: ignore[attr-defined]
            "/v1/completions": completions,
        }
    )
    try:
        eng = RemoteEngine(fake.url)
        report = eng.connect()
        assert report.kind == "vllm" and report.n_ctx == 8192 and report.model == "org/cat-70b"
        tokens = eng.tokenize(CHATML)
        gen = eng.generate(tokens, greedy(16, top_k=0, min_p=0.1), stop=["\n"], text=CHATML)
        assert gen.result() == "Red and blue"
        stats = gen.stats
        assert stats is not None and stats.finish_reason == "stop_string" and stats.stop_string == "\n"
        assert stats.prompt_reused == 24 and stats.prompt_evaluated == 6 and stats.generated_tokens == 3
        [body] = seen
        assert body["prompt"] == tokens and body["model"] == "org/cat-70b" and body["top_k"] == -1
        assert body["repetition_penalty"] == 1.0 and body["stream_options"] == {"include_usage": True}
        eng.close()
    finally:
        fake.close()


def test_a_server_without_a_tokenizer_counts_with_a_local_gguf(
    engine: Engine, model_path: Path, cattery_home: Path
) -> None:
    """A plain OpenAI-compatible server (no tokenize endpoint): refused without a tokenizer, saying
    how to give one; with the served model's GGUF named, the window counts with its vocabulary,
    the prompt goes as text, and `--format gguf` is that GGUF's own template."""
    from tests.conftest import run_cattery

    seen: list[dict[str, object]] = []

    def completions(h: BaseHTTPRequestHandler) -> None:
        seen.append(h.body)  # type: ignore[attr-defined]
        stream_events([piece("Paris.", "stop"), b"data: [DONE]\n\n"])(h)

    fake = Fake({"/v1/completions": completions})
    try:
        with pytest.raises(RemoteError, match="no tokenizer endpoint: name the served model's GGUF"):
            RemoteEngine(fake.url, n_ctx=2048).connect()
        eng = RemoteEngine(fake.url, n_ctx=2048, tokenizer=model_path)
        report = eng.connect()
        assert report.kind == "openai" and report.tokenizer == f"the local {model_path.name}"
        assert eng.tokenize(CHATML) == engine.tokenize(CHATML) and eng.info is not None
        assert eng.generate(eng.tokenize(CHATML), greedy(8), text=CHATML).result() == "Paris."
        assert seen[-1]["prompt"] == CHATML and seen[-1]["model"] == "m"
        eng.close()
        done = run_cattery(
            "chat", "--plain", "--new", "--card", "none", "--engine", fake.url, "--ctx", "2048",
            "--engine-tokenizer", str(model_path), "--format", "gguf", input="Capital of France?\n",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "Paris." in done.stdout and "format gguf" in done.stderr
        assert "<|im_start|>user\nCapital of France?<|im_end|>" in str(seen[-1]["prompt"])  # the GGUF's template
    finally:
        fake.close()
