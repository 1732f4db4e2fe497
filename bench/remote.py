"""A remote inference server as the engine (issue 19): Cattery's client against a bare one, and a
long chat through the server against the local engine.

The server is llama-cpp-python's own (`python -m llama_cpp.server`) on the bundled model, on
127.0.0.1, one process beside this one.

1. Client overhead: the same greedy prompt streamed 5 times through `RemoteEngine.generate` and
   through a bare client (requests, reading the server-sent events as they come, nothing else),
   alternating; decode speed (tokens after the first / their time) and first-token time, medians.
2. A 20-turn chat at a full window (ctx 2048, the window sliding): the same messages through the
   local engine and through the server, both through `ChatSession`; per turn, the prompt's tokens
   and what each evaluated. The local engine evaluates only the new tokens (a slid window is
   shifted in its cache); a server does not shift, so a turn where the window slides costs it the
   prompt from the first message that left. llama-cpp-python's server does not say what it
   evaluated: for it the count is what a prefix cache of the last prompt and reply keeps (it does
   keep its context's prefix), and is marked as such.

    python bench/remote.py
    python bench/remote.py --llama-server [PATH]   # llama.cpp's own server (built by bench/llama_server.py)

With --llama-server the server is llama-server (built from the llama.cpp that llama-cpp-python vendors
unless a binary is named): the client goes through its native /completion (token ids, prompt cache),
the bare client posts the same text there, and the chat's evaluated counts are the server's own
(`timings.prompt_n`), once as started plainly and once with `--cache-reuse 256` (llama-server's reuse
of cached chunks after a gap, by shifting them: what a slid window needs).

Targets: decode >= 0.97x the bare client's; first-token overhead < 20 ms. Writes bench/out/remote.json
and a row in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT_DIR, append_result_row, machine, median, now, write_json

CTX = 2048
PROMPT = (
    "<|im_start|>user\nTell me a long story about a lighthouse keeper and her cat.<|im_end|>\n<|im_start|>assistant\n"
)
TOKENS = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command: list[str], port: int, log: Path, ready: str, what: str) -> tuple[subprocess.Popen[bytes], str]:
    """A server process, its output to `log`, and its URL once `ready` (a path) answers."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 120
    while True:
        try:
            requests.get(url + ready, timeout=1).raise_for_status()
            return proc, url
        except requests.RequestException:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not start: " + log.read_text()[-2000:]) from None
            time.sleep(0.3)


def start_server(model: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
               "--n_ctx", str(CTX), "--n_threads", "2"]  # fmt: skip
    return _start(command, port, log, "/v1/models", "llama_cpp.server")


def start_llama_server(binary: Path, model: Path, log: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [str(binary), "-m", str(model), "-c", str(CTX), "-t", "2", "-np", "1", "--host", "127.0.0.1",
               "--port", str(port), *extra]  # fmt: skip
    return _start(command, port, log, "/health", "llama-server")


def bare(url: str, native: bool = False) -> tuple[float, float, int]:
    """(first token s, decode tok/s, tokens) with nothing but requests and the SSE lines; `native`:
    llama-server's /completion, as Cattery's client uses it there."""
    import requests

    if native:
        path = "/completion"
        body = {"prompt": PROMPT, "n_predict": TOKENS, "temperature": 0.0, "repeat_penalty": 1.0, "seed": 1,
                "stream": True, "cache_prompt": True}  # fmt: skip
    else:
        path = "/v1/completions"
        body = {"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0.0, "repeat_penalty": 1.0, "seed": 1,
                "stream": True}  # fmt: skip
    start = time.perf_counter()
    first = last = 0.0
    n = 0
    with requests.post(url + path, json=body, stream=True, timeout=(10, 120)) as resp:
        for line in resp.iter_lines(chunk_size=None):
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("content") if native else event["choices"][0].get("text"):
                n += 1
                last = time.perf_counter()
                if n == 1:
                    first = last - start
    return first, (n - 1) / (last - start - first) if n > 1 else 0.0, n


def cattery(engine: Any) -> tuple[float, float, int]:
    from app.engine.options import SamplerSettings

    sampler = SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=TOKENS, seed=1)
    start = time.perf_counter()
    gen = engine.generate(engine.tokenize(PROMPT), sampler, text=PROMPT, stream_interval=0)
    first = last = 0.0
    for _ in gen:
        last = time.perf_counter()
        if not first:
            first = last - start
    stats = gen.stats
    n = stats.generated_tokens if stats is not None else 0
    return first, (n - 1) / (last - start - first) if n > 1 else 0.0, n


def chat_turns(ws: Any, engine: Any, choice: Any) -> list[dict[str, int]]:
    """20 turns of one chat at a full window; per turn the prompt, evaluated and new tokens."""
    from app.engine.options import SamplerSettings
    from app.session.chat import start_session

    sampler = SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=48, seed=1)
    session = start_session(ws, None, sampler=sampler)
    session.attach(engine, choice)
    for i in range(40):  # a history that overflows the window: it slides from the first turn on
        session.store.add_message(session.chat_id, "user", f"Part {i}: what did the keeper see that night?")
        session.store.add_message(
            session.chat_id, "assistant", f"On night {i} she saw the lamp turn, the gulls sleep and the sea keep still."
        )
    session.reload()
    rows = []
    for i in range(20):
        session.add_user(f"Turn {i}: and then?")
        t = session.begin("reply")
        t.generation.result()
        session.finish(t)
        stats = t.generation.stats
        rows.append(
            {"prompt": len(t.built.tokens or []), "evaluated": stats.prompt_evaluated,
             "left_window": len(t.built.evicted_now)}
        )  # fmt: skip
    return rows


def main() -> int:
    if "--llama-server" in sys.argv:
        i = sys.argv.index("--llama-server")
        named = sys.argv[i + 1] if len(sys.argv) > i + 1 and not sys.argv[i + 1].startswith("-") else None
        return against_llama_server(Path(named) if named else None)
    home = Path(tempfile.mkdtemp(prefix="cattery-remote-"))
    os.environ["CATTERY_HOME"] = str(home)
    from app.engine.engine import Engine
    from app.engine.options import LoadOptions
    from app.engine.remote import RemoteEngine
    from app.hub.bundled import find_bundled_model
    from app.session.workspace import Workspace

    model = find_bundled_model()
    proc, url = start_server(model, home / "server.log")
    try:
        remote = RemoteEngine(url, n_ctx=CTX)
        report = remote.connect()
        cattery(remote), bare(url)  # warm both paths
        ours, theirs = [], []
        for _ in range(5):
            ours.append(cattery(remote))
            theirs.append(bare(url))
        ws = Workspace()
        choice = ws.chat_format(None, None, "chatml")
        remote_rows = chat_turns(ws, remote, choice)
        remote.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    local = Engine()
    local.load(model, LoadOptions(ctx=CTX, threads=2))
    local_rows = chat_turns(ws, local, choice)
    local.close()
    ws.close()

    decode_ratio = median([o[1] for o in ours]) / median([t[1] for t in theirs])
    first_overhead = median([o[0] for o in ours]) - median([t[0] for t in theirs])
    result = {
        "date": now(),
        "machine": machine(),
        "model": model.name,
        "server": report.kind,
        "client": {
            "cattery_first_token_s": [o[0] for o in ours],
            "bare_first_token_s": [t[0] for t in theirs],
            "cattery_decode_tps": [o[1] for o in ours],
            "bare_decode_tps": [t[1] for t in theirs],
            "decode_ratio": decode_ratio,
            "first_token_overhead_s": first_overhead,
        },
        "chat": {
            "remote": remote_rows,
            "local": local_rows,
            "remote_evaluated": sum(r["evaluated"] for r in remote_rows),
            "local_evaluated": sum(r["evaluated"] for r in local_rows),
            "remote_evaluated_is_estimated": report.kind == "llama-cpp-python",
        },
        "targets": {"decode_ratio": 0.97, "first_token_overhead_ms": 20},
    }
    write_json("remote", result)
    c, ch = result["client"], result["chat"]
    print(
        f"client: decode {median(c['cattery_decode_tps']):.1f} vs bare {median(c['bare_decode_tps']):.1f} tok/s "
        f"({decode_ratio:.3f}x); first token {median(c['cattery_first_token_s']) * 1000:.0f} vs "
        f"{median(c['bare_first_token_s']) * 1000:.0f} ms ({first_overhead * 1000:+.1f} ms)"
    )
    print(
        f"20 turns at a full window: evaluated {ch['local_evaluated']} locally, {ch['remote_evaluated']} on the server"
        f"{' (estimated: the server does not say)' if ch['remote_evaluated_is_estimated'] else ''}"
    )
    for i, (r, lo) in enumerate(zip(remote_rows, local_rows, strict=True)):
        print(
            f"  turn {i:2}: prompt {r['prompt']:5}  evaluated local {lo['evaluated']:5}  server {r['evaluated']:5}"
            f"  messages that left the window {r['left_window']}"
        )
    header = [
        "date",
        "machine",
        "server",
        "decode Cattery / bare",
        "first token overhead",
        "20 turns evaluated: local / server",
    ]
    append_result_row(
        "Remote engine: Cattery's client against a bare one, a long chat local vs server (`python bench/remote.py`)",
        header,
        [
            result["date"],
            str(result["machine"].get("cpu", ""))[:40],
            report.kind,
            f"{median(c['cattery_decode_tps']):.1f} / {median(c['bare_decode_tps']):.1f} tok/s ({decode_ratio:.3f}x)",
            f"{first_overhead * 1000:+.1f} ms",
            f"{ch['local_evaluated']} / {ch['remote_evaluated']}"
            + (" (est.)" if ch["remote_evaluated_is_estimated"] else ""),
        ],
    )
    return 0


def against_llama_server(binary: Path | None) -> int:
    """The client and the chat against llama.cpp's own server; the chat with and without --cache-reuse."""
    home = Path(tempfile.mkdtemp(prefix="cattery-llama-server-"))
    os.environ["CATTERY_HOME"] = str(home)
    from app.engine.remote import RemoteEngine
    from app.hub.bundled import find_bundled_model
    from app.session.workspace import Workspace
    from bench.llama_server import build

    binary = binary or build()
    model = find_bundled_model()
    ws = Workspace()
    choice = ws.chat_format(None, None, "chatml")
    runs: dict[str, Any] = {}
    for label, extra in (("plain", []), ("cache_reuse_256", ["--cache-reuse", "256"])):
        proc, url = start_llama_server(binary, model, home / f"server-{label}.log", extra)
        try:
            remote = RemoteEngine(url)
            report = remote.connect()
            if label == "plain":
                cattery(remote), bare(url, native=True)  # warm both paths
                ours, theirs = [], []
                for _ in range(5):
                    ours.append(cattery(remote))
                    theirs.append(bare(url, native=True))
                runs["client"] = {
                    "cattery_first_token_s": [o[0] for o in ours],
                    "bare_first_token_s": [t[0] for t in theirs],
                    "cattery_decode_tps": [o[1] for o in ours],
                    "bare_decode_tps": [t[1] for t in theirs],
                    "decode_ratio": median([o[1] for o in ours]) / median([t[1] for t in theirs]),
                    "first_token_overhead_s": median([o[0] for o in ours]) - median([t[0] for t in theirs]),
                }
            rows = chat_turns(ws, remote, choice)
            runs[label] = {"rows": rows, "evaluated": sum(r["evaluated"] for r in rows), "build": report.build}
            remote.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    ws.close()
    local = json.loads((OUT_DIR / "remote.json").read_text())["chat"] if (OUT_DIR / "remote.json").is_file() else None
    result = {"date": now(), "machine": machine(), "model": model.name, "server": "llama-server", **runs,
              "local_evaluated": local["local_evaluated"] if local else None,
              "targets": {"decode_ratio": 0.97, "first_token_overhead_ms": 20}}  # fmt: skip
    write_json("remote_llama_server", result)
    c = runs["client"]
    print(
        f"llama-server {runs['plain']['build']}: decode {median(c['cattery_decode_tps']):.1f} vs bare "
        f"{median(c['bare_decode_tps']):.1f} tok/s ({c['decode_ratio']:.3f}x); first token "
        f"{median(c['cattery_first_token_s']) * 1000:.0f} vs {median(c['bare_first_token_s']) * 1000:.0f} ms "
        f"({c['first_token_overhead_s'] * 1000:+.1f} ms)"
    )
    print(
        f"20 turns at a full window, evaluated by the server (its timings.prompt_n): {runs['plain']['evaluated']}, "
        f"with --cache-reuse 256: {runs['cache_reuse_256']['evaluated']}"
        + (f"; locally (bench/remote.py's last run): {result['local_evaluated']}" if local else "")
    )
    for i, (a, b) in enumerate(zip(runs["plain"]["rows"], runs["cache_reuse_256"]["rows"], strict=True)):
        print(
            f"  turn {i:2}: prompt {a['prompt']:5}  evaluated {a['evaluated']:5}  with cache reuse {b['evaluated']:5}"
            f"  messages that left the window {a['left_window']}"
        )
    append_result_row(
        "Remote engine against llama.cpp's llama-server, built from the vendored llama.cpp "
        "(`python bench/remote.py --llama-server`)",
        ["date", "machine", "build", "decode Cattery / bare", "first token overhead",
         "20 turns evaluated: server / with --cache-reuse 256 / local"],
        [
            result["date"],
            str(result["machine"].get("cpu", ""))[:40],
            str(runs["plain"]["build"]),
            f"{median(c['cattery_decode_tps']):.1f} / {median(c['bare_decode_tps']):.1f} tok/s "
            f"({c['decode_ratio']:.3f}x)",
            f"{c['first_token_overhead_s'] * 1000:+.1f} ms",
            f"{runs['plain']['evaluated']} / {runs['cache_reuse_256']['evaluated']} / {result['local_evaluated']}",
        ],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
