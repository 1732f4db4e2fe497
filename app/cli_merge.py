"""`cattery merge RECIPE.toml -o OUT_DIR|OUT.gguf`: merge checkpoints as a recipe says.

A thin call into `converters/merge.py`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_merge(args: argparse.Namespace) -> int:
    from app.cli_convert import progress_printer
    from converters.merge import run_merge

    out = run_merge(Path(args.recipe), Path(args.output), progress=progress_printer("merge"))
    print(f"wrote {out}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("merge", help="merge checkpoints (LoRA at a weight, linear, gradient, SLERP) from a recipe")
    p.add_argument("recipe", metavar="RECIPE.toml")
    p.add_argument("-o", "--output", metavar="OUT_DIR|OUT.gguf", required=True)
    p.set_defaults(func=cmd_merge)
