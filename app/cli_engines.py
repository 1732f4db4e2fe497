"""`cattery engines …`: the inference servers named in the settings, and a connection test.

`remote_engine` is also how `cattery chat --engine URL|NAME` makes its engine, so what the test
says is what a chat would get. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def remote_engine(ws: Any, target: str, **kw: Any) -> Any:
    """`app.session.engines.remote_engine`, with the command line's model resolver for a tokenizer
    that names a model (a hub name is downloaded first, with progress)."""
    from app.cli import model_argument
    from app.session.engines import remote_engine as make

    return make(ws, target, find_gguf=lambda ref: model_argument(ws, ref), **kw)


def _workspace() -> Any:
    from app.cli import open_workspace

    return open_workspace()


def cmd_list(args: argparse.Namespace) -> int:
    from app.session.engines import named_engines

    ws = _workspace()
    engines = named_engines(ws)
    if args.json:
        print(json.dumps(engines, indent=2))
        return 0
    if not engines:
        print(f"no engines named yet: add [engines.NAME] with url = ... to {ws.settings.path}")
        return 0
    for name, e in engines.items():
        extra = [f"model {e['model']}"] if e.get("model") else []
        extra += [f"key from ${e['api_key_env']}"] if e.get("api_key_env") else []
        extra += [f"ctx {e['ctx']}"] if e.get("ctx") else []
        extra += [f"tokenizer {e['tokenizer']}"] if e.get("tokenizer") else []
        print(f"{name}  {e['url']}" + (f"  ({', '.join(extra)})" if extra else ""))
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    """Connect as a chat would, then time a one-token completion: what answers and how fast."""
    from app.session.engines import probe

    ws = _workspace()
    engine = remote_engine(
        ws, args.engine, model=args.engine_model, key_env=args.engine_key_env, ctx=args.ctx,
        tokenizer=args.engine_tokenizer,
    )  # fmt: skip
    try:
        found = probe(engine)
    finally:
        engine.close()
    if args.json:
        print(json.dumps(found.as_json(), indent=2))
    else:
        print("\n".join(found.lines()))
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
    test.add_argument(
        "--engine-tokenizer",
        metavar="GGUF|JSON|REPO",
        help="count tokens with this GGUF's vocabulary, a tokenizer.json, or a hub repo's tokenizer.json",
    )
    test.add_argument("--json", action="store_true")
    test.set_defaults(func=cmd_test)
