"""`cattery merge RECIPE.toml -o OUT_DIR|OUT.gguf`: merge checkpoints as a recipe says.

A thin call into `converters/merge.py`; the recipe format is documented in
`converters/merge_recipe.py` and the README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def cmd_merge(args: argparse.Namespace) -> int:
    from app.progress import ProgressPrinter
    from converters.merge import merge, peak_memory, plan_merge
    from converters.merge_recipe import load_recipe

    recipe = load_recipe(Path(args.recipe))
    if args.dry_run:
        from app.units import fmt_size

        model = plan_merge(recipe)
        try:
            for line in model.plan_lines():
                print(line)
            for note in model.notes:
                print(f"note: {note}")
            print(
                f"{len(model.tensors)} tensors, {fmt_size(model.total_bytes)} as safetensors; "
                f"peak memory about {fmt_size(peak_memory(model))}"
            )
        finally:
            model.close()
        return 0
    if not args.output:
        from app.errors import CatteryError

        raise CatteryError(f"{args.recipe}: say where the merge goes: -o OUT_DIR or -o OUT.gguf (or --dry-run)")
    gguf = {"outtype": args.outtype, "pre_tokenizer": args.pre_tokenizer, "chat_format": args.chat_format}
    result = merge(recipe, Path(args.output), progress=ProgressPrinter("merge"), force=args.force, gguf=gguf)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(result.summary())
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("merge", help="merge checkpoints (LoRA at a weight, linear, gradient, SLERP) from a recipe")
    p.add_argument("recipe", metavar="RECIPE.toml")
    p.add_argument(
        "-o", "--output", metavar="OUT_DIR|OUT.gguf", help="a folder, or a GGUF written straight (not with --dry-run)"
    )
    p.add_argument("--force", action="store_true", help="replace the output if it exists")
    p.add_argument(
        "--dry-run", action="store_true", help="print each tensor's shape and what every step gives it; write nothing"
    )
    g = p.add_argument_group("GGUF output (OUT.gguf), overriding the recipe's [gguf] table")
    g.add_argument("--outtype", choices=["f32", "f16", "bf16", "q8_0", "auto"], help="weights' type (default auto)")
    g.add_argument("--pre-tokenizer", metavar="NAME", help="the BPE pre-tokenizer, when its hash is unknown")
    g.add_argument("--chat-format", metavar="F", help="write this Cattery prompt format into the GGUF as its template")
    p.set_defaults(func=cmd_merge)
