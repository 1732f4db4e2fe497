"""Loopback HTTP servers that answer as inference servers do, for the remote engine's tests: a path
each, answered by the function given. Real servers are used where they can run here (llama-cpp-python's
own); these stand in for what cannot (llama-server, vLLM) and for faults a real server will not show on
demand."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fake:
    """A loopback server answering each path with the function given for it."""

    def __init__(self, routes: dict[str, Callable[[BaseHTTPRequestHandler], None]]) -> None:
        routes = {"/v1/models": lambda h: send_json(h, {"data": [{"id": "m"}]}), **routes}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._route()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.body = json.loads(self.rfile.read(length) or b"{}")
                self._route()

            def _route(self) -> None:
                fn = routes.get(self.path)
                if fn is None:
                    self.send_error(404)
                    return
                fn(self)

        self.seen: list[dict[str, Any]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send_json(
    h: BaseHTTPRequestHandler, body: object, status: int = 200, headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


def tokenize_ok(h: BaseHTTPRequestHandler) -> None:
    text = h.body.get("input", "")  # type: ignore[attr-defined]
    send_json(h, {"tokens": [ord(c) for c in text]})


def stream_events(events: list[bytes], *, then: str = "end") -> Callable[[BaseHTTPRequestHandler], None]:
    def handle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        for e in events:
            h.wfile.write(e)
            h.wfile.flush()
        if then == "hang":
            time.sleep(3)
        h.close_connection = True

    return handle


def piece(text: str, finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({"choices": [{"text": text, "finish_reason": finish}]}).encode() + b"\n\n"


def llama_server(engine: object, reply: list[str], *, model: str = "/models/Cat-llama3-70B.Q4_K_M.gguf") -> Fake:
    """A loopback server speaking llama-server's native protocol as llama.cpp's server README documents
    it (llama-server cannot be installed from the package index): /props with the bundled model's own
    chat template and BOS/EOS texts, /tokenize and /detokenize with its real vocabulary (`engine`, the
    local engine on the bundled model), and /completion streaming `reply` with `timings` at the end.
    Each request's body is kept in `fake.seen`."""
    eng: Any = engine
    info = eng.info

    def props(h: BaseHTTPRequestHandler) -> None:
        send_json(
            h,
            {
                "default_generation_settings": {"n_ctx": 4096},
                "chat_template": info.chat_template,
                "bos_token": info.bos_token,
                "eos_token": info.eos_token,
                "build_info": "b6000-test",
                "model_path": model,
            },
        )

    def tokenize(h: BaseHTTPRequestHandler) -> None:
        send_json(h, {"tokens": eng.segment_tokenize(h.body["content"])})  # type: ignore[attr-defined]

    def detokenize(h: BaseHTTPRequestHandler) -> None:
        send_json(h, {"content": eng.detokenize(h.body["tokens"])})  # type: ignore[attr-defined]

    def completion(h: BaseHTTPRequestHandler) -> None:
        body = h.body  # type: ignore[attr-defined]
        fake.seen.append(body)
        n = len(body["prompt"]) if isinstance(body["prompt"], list) else 0
        events = [{"content": text, "stop": False} for text in reply]
        timings = {"prompt_n": n, "prompt_ms": 5.0, "predicted_n": len(reply), "predicted_per_second": 50.0}
        events.append({"content": "", "stop": True, "stop_type": "eos", "timings": timings})
        stream_events([b"data: " + json.dumps(e).encode() + b"\n\n" for e in events])(h)

    fake = Fake(
        {
            "/props": props,
            "/v1/models": lambda h: send_json(h, {"data": [{"id": model}]}),
            "/tokenize": tokenize,
            "/detokenize": detokenize,
            "/completion": completion,
        }
    )
    return fake
