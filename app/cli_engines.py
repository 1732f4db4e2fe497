"""`cattery engines …`: the inference servers named in the settings, and a connection test.

`remote_engine` is also how `cattery chat --engine URL|NAME` makes its engine, so what the test
says is what a chat would get. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from app.errors import CatteryError


def remote_engine(
    ws: Any,
    target: str,
    *,
    model: str | None = None,
    key_env: str | None = None,
    ctx: int | None = None,
    tokenizer: str | None = None,
) -> Any:
    """A RemoteEngine (not yet connected) for a URL, or a name from the settings' [engines.NAME]; the
    arguments given win over the named engine's settings. The API key is read from the environment
    variable named, never from a file."""
    from app.engine.remote import RemoteEngine

    url, named = target, {}
    if "://" not in target:
        engines = ws.settings.section("engines")
        named = engines.get(target)
        if not isinstance(named, dict):
            known = ", ".join(sorted(engines)) or "none yet"
            raise CatteryError(
                f"no engine named {target!r} in {ws.settings.path} (named: {known}); "
                f"give a URL, or add [engines.{target}]"
            )
        url = named["url"]
    key_env = key_env or named.get("api_key_env")
    key = None
    if key_env:
        key = os.environ.get(key_env)
        if not key:
            raise CatteryError(f"the environment variable {key_env} holding the engine's API key is not set")
    vocab = tokenizer or named.get("tokenizer")
    vocab_path = None
    if vocab:
        from app.cli import model_argument

        vocab_path = model_argument(ws, vocab)  # a .gguf path or a library name; one line if neither
    return RemoteEngine(
        url, model=model or named.get("model"), api_key=key, n_ctx=ctx or named.get("ctx"), tokenizer=vocab_path
    )


def _workspace() -> Any:
    from app.cli import open_workspace

    return open_workspace()


def cmd_list(args: argparse.Namespace) -> int:
    ws = _workspace()
    engines = ws.settings.section("engines")
    if args.json:
        print(json.dumps(engines, indent=2))
        return 0
    if not engines:
        print(f"no engines named yet: add [engines.NAME] with url = ... to {ws.settings.path}")
        return 0
    for name, e in sorted(engines.items()):
        extra = [f"model {e['model']}"] if e.get("model") else []
        extra += [f"key from ${e['api_key_env']}"] if e.get("api_key_env") else []
        extra += [f"ctx {e['ctx']}"] if e.get("ctx") else []
        print(f"{name}  {e['url']}" + (f"  ({', '.join(extra)})" if extra else ""))
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    """Connect as a chat would, then time a one-token completion: what answers and how fast."""
    from app.engine.options import SamplerSettings

    ws = _workspace()
    engine = remote_engine(
        ws, args.engine, model=args.engine_model, key_env=args.engine_key_env, ctx=args.ctx,
        tokenizer=args.engine_tokenizer,
    )  # fmt: skip
    try:
        started = time.perf_counter()
        report = engine.connect()
        connected = time.perf_counter() - started
        tokens = engine.tokenize("Hello")
        gen = engine.generate(tokens, SamplerSettings(temperature=0.0, max_tokens=1, seed=1), text="Hello")
        gen.result()
        stats = gen.stats
        out = {
            "url": report.url,
            "server": report.kind,
            "model": report.model,
            "ctx": report.n_ctx,
            "ctx_from_server": report.n_ctx_known,
            "build": report.build,
            "tokenizer": report.tokenizer,
            "connect_seconds": round(connected, 4),
            "first_token_seconds": round(stats.time_to_first_token, 4) if stats is not None else None,
            "warnings": report.warnings,
        }
    finally:
        engine.close()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['url']}: {out['server']} serving {out['model']}")
    ctx_note = "" if out["ctx_from_server"] else " (not said by the server: from the settings or assumed)"
    print(f"context {out['ctx']} tokens{ctx_note}; build {out['build'] or 'not reported'}")
    print(f"tokens counted by {out['tokenizer']}")
    first = out["first_token_seconds"]
    print(f"connected in {connected * 1000:.0f} ms; a one-token reply in {first * 1000 if first else 0:.0f} ms")
    for warning in out["warnings"]:
        print(f"warning: {warning}")
    return 0


def add_parser(sub: Any) -> None:
    engines = sub.add_parser("engines", help="inference servers to chat through (--engine), and a connection test")
    engines.add_argument("--json", action="store_true")
    engines.set_defaults(func=cmd_list)
    esub = engines.add_subparsers(dest="engines_command", metavar="SUBCOMMAND")
    test = esub.add_parser("test", help="connect to an engine as a chat would, and time a one-token reply")
    test.add_argument("engine", metavar="URL|NAME")
    test.add_argument("--engine-model", metavar="ID")
    test.add_argument("--engine-key-env", metavar="VAR")
    test.add_argument("--ctx", type=int, metavar="N")
    test.add_argument("--engine-tokenizer", metavar="GGUF", help="count tokens with this GGUF's vocabulary")
    test.add_argument("--json", action="store_true")
    test.set_defaults(func=cmd_test)
