"""`cattery build RECIPE.toml`: download, merge, convert and quantize as a recipe says, then put
the results in the model library with the recipe's prompt format recorded for them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def cmd_build(args: argparse.Namespace) -> int:
    from app.cli import open_workspace
    from app.progress import ProgressPrinter
    from converters.build import load_build, run_build

    ws = open_workspace()
    recipe = load_build(Path(args.recipe))
    stages: list[Any] = []

    def on_stage(text: str) -> None:
        stages.append(ProgressPrinter(text))
        print(text, file=sys.stderr, flush=True)

    def progress(done: int, total: int, what: str = "", nbytes: int = 0, total_bytes: int = 0) -> None:
        if stages:
            stages[-1](done, total, what, nbytes, total_bytes)

    result = run_build(Path(args.recipe), ws.paths.models_dir, progress=progress, on_stage=on_stage, force=args.force)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for path in result.outputs:
        if recipe.format:
            problem = ws.save_load_settings(path, {"format": recipe.format})
            if problem:
                print(f"warning: {problem}", file=sys.stderr)
        print(path)
    first = result.chat_model.stem if result.chat_model else recipe.name
    print(f"built in {result.seconds:.0f} s; chat with it: cattery --model {first}", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("build", help="download → merge → convert → quantize → the model library, from a recipe")
    p.add_argument("recipe", metavar="RECIPE.toml")
    p.add_argument("--force", action="store_true", help="replace the results of an earlier build of this recipe")
    p.set_defaults(func=cmd_build)
