"""`cattery quantize` (GGUF → quantized GGUF through llama.cpp) and `cattery eval` (perplexity).

Thin calls into `converters/quantize.py` and `converters/perplexity.py`.
"""

from __future__ import annotations

import argparse
from typing import Any


def cmd_quantize(args: argparse.Namespace) -> int:
    from app.cli_convert import progress_printer
    from converters.quantize import quantize_command

    return int(quantize_command(args, progress=progress_printer("quantize")) or 0)


def cmd_eval(args: argparse.Namespace) -> int:
    from converters.perplexity import eval_command

    return int(eval_command(args) or 0)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("quantize", help="GGUF → quantized GGUF (Q4_K_M, Q5_K_M, Q6_K, Q8_0, IQ4_XS, …)")
    p.add_argument("src", metavar="IN.gguf")
    p.add_argument("-o", "--output", metavar="OUT.gguf|OUT_DIR", required=True, help="a folder with several --type")
    p.add_argument("--type", dest="types", action="append", required=True, metavar="TYPE")
    p.add_argument("--imatrix", metavar="FILE", help="an importance matrix made by llama.cpp")
    p.add_argument("--dry-run", action="store_true", help="print the resulting size and stop")
    p.add_argument("--threads", type=int, metavar="N")
    p.add_argument("--leave-output-tensor", action="store_true", help="keep output.weight unquantized")
    p.add_argument("--pure", action="store_true", help="no k-quant mixtures: every tensor the same type")
    p.add_argument(
        "--tensor-type", action="append", default=[], metavar="PATTERN=TYPE", help="per-tensor override (regex)"
    )
    p.set_defaults(func=cmd_quantize)
    p = sub.add_parser("eval", help="perplexity of a model over a text file (as llama.cpp's perplexity tool)")
    p.add_argument("model_ref", metavar="MODEL")
    p.add_argument("text", metavar="TEXT_FILE")
    p.add_argument("--ctx", type=int, default=512, metavar="N", help="chunk size in tokens (default 512)")
    p.add_argument("--threads", type=int, metavar="N")
    p.add_argument("--chunks", type=int, metavar="N", help="evaluate only the first N chunks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
