"""`cattery quantize` (GGUF → quantized GGUF through llama.cpp) and `cattery eval` (perplexity).

Thin calls into `converters/quantize.py` and `converters/perplexity.py`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def _named(ref: str) -> bool:
    """Whether a model argument is a name (library or hub) rather than a path to a file."""
    from pathlib import Path

    try:
        return not Path(ref).expanduser().is_file()
    except (OSError, ValueError):
        return True


def cmd_quantize(args: argparse.Namespace) -> int:
    from app.cli import model_argument, open_workspace
    from app.cli_convert import progress_printer
    from converters.quantize import quantize_command

    ws = open_workspace()
    named = _named(args.src)
    args.src = str(model_argument(ws, args.src))
    if named and not args.output:
        # A model known by name lives in the library, the HF cache or the bundled package: its quants
        # go into the library (where `models list` shows them), not beside a cache blob or in site-packages.
        ws.paths.models_dir.mkdir(parents=True, exist_ok=True)
        args.output = str(ws.paths.models_dir) + os.sep
    return int(quantize_command(args, progress=progress_printer("quantize")) or 0)


def cmd_eval(args: argparse.Namespace) -> int:
    from app.cli import model_argument, open_workspace
    from app.engine.options import parse_gpu_layers
    from converters.perplexity import eval_command

    parse_gpu_layers(args.gpu_layers)  # a bad value is refused before a download or a load
    args.model_ref = str(model_argument(open_workspace(), args.model_ref))
    return int(eval_command(args) or 0)


def _types_epilog() -> str:
    """The table of types for --help: a small TOML read, no llama.cpp."""
    from converters.quant_types import all_types

    rows = [
        f"  {qt.name:<10} {qt.bpw:>6.2f} bpw  {'needs --imatrix  ' if qt.imatrix else '                 '}{qt.about}"
        for qt in all_types()
    ]
    return "types (bits per weight on Llama-3.1-8B):\n" + "\n".join(rows)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "quantize",
        help="GGUF → quantized GGUF (Q4_K_M, Q5_K_M, Q6_K, Q8_0, IQ4_XS, …)",
        epilog=_types_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="M", help="a .gguf path, a library name, or owner/repo[:QUANT|:file]")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT.gguf|OUT_DIR",
        help="the file, or a folder for several --type (default: STEM.TYPE.gguf beside the input file; "
        "for a model given by name, in the models folder)",
    )
    p.add_argument(
        "--type",
        dest="types",
        action="append",
        required=True,
        metavar="TYPE",
        help="a llama.cpp type (listed below); repeat it to make several files from one input",
    )
    p.add_argument("--imatrix", metavar="FILE", help="an importance matrix made by llama.cpp")
    p.add_argument("--dry-run", action="store_true", help="print the resulting size and stop")
    p.add_argument("--threads", type=int, metavar="N")
    p.add_argument("--leave-output-tensor", action="store_true", help="keep output.weight unquantized")
    p.add_argument("--pure", action="store_true", help="no k-quant mixtures: every tensor the same type")
    p.add_argument(
        "--tensor-type", action="append", default=[], metavar="PATTERN=TYPE", help="per-tensor override (regex)"
    )
    p.add_argument("--output-tensor-type", metavar="TYPE", help="the ggml type of output.weight (q8_0, q6_K, f16, …)")
    p.add_argument("--token-embedding-type", metavar="TYPE", help="the ggml type of token_embd.weight")
    p.add_argument(
        "--allow-requantize", action="store_true", help="quantize tensors that are already quantized (loses quality)"
    )
    p.set_defaults(func=cmd_quantize)
    p = sub.add_parser("eval", help="perplexity of a model over a text file (as llama.cpp's perplexity tool)")
    p.add_argument("model_ref", metavar="M", help="a .gguf path, a library name, or owner/repo[:QUANT|:file]")
    p.add_argument("text", metavar="TEXT_FILE")
    p.add_argument("--ctx", type=int, default=512, metavar="N", help="chunk size in tokens (default 512)")
    p.add_argument("--threads", type=int, metavar="N")
    p.add_argument(
        "--gpu-layers", metavar="auto|all|N", help="layers to offload to the GPU, as `cattery chat` (default auto)"
    )
    p.add_argument("--chunks", type=int, metavar="N", help="evaluate only the first N chunks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
