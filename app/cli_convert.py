"""`cattery convert` (HF checkpoint → GGUF) and `cattery unpack` (GGUF → HF checkpoint).

Thin calls into `converters/hf_to_gguf.py` and `converters/unpack.py`; nothing heavy is
imported until a command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def progress_printer(label: str) -> Any:
    """A progress callback for converters: `(done, total, what)` → one line on stderr."""
    tty = sys.stderr.isatty()
    last = [-1]

    def report(done: int, total: int, what: str = "") -> None:
        pct = int(100 * done / total) if total else 100
        if tty:
            sys.stderr.write(f"\r{label}: {done}/{total} ({pct}%) {what[:60]:<60}")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif pct >= last[0] + 25 or done >= total:
            last[0] = pct
            print(f"{label}: {done}/{total} ({pct}%)", file=sys.stderr, flush=True)

    return report


def cmd_convert(args: argparse.Namespace) -> int:
    from converters.hf_to_gguf import convert

    report = convert(
        Path(args.src),
        Path(args.output),
        outtype=args.outtype,
        pre_tokenizer=args.pre_tokenizer,
        chat_format=args.chat_format,
        progress=progress_printer("convert"),
    )
    print(report.summary() if hasattr(report, "summary") else f"wrote {args.output}")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from converters.unpack import unpack

    out = unpack(Path(args.src), Path(args.output), progress=progress_printer("unpack"), dtype=args.dtype)
    print(f"wrote {out}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("convert", help="a Hugging Face checkpoint (safetensors) → GGUF")
    p.add_argument("src", metavar="SRC_DIR", help="a folder with config.json, safetensors and the tokenizer")
    p.add_argument("-o", "--output", metavar="OUT.gguf", required=True)
    p.add_argument(
        "--outtype",
        choices=["f32", "f16", "bf16", "q8_0", "auto"],
        default="auto",
        help="weights' type (auto: bf16 for a bf16 checkpoint, else f16)",
    )
    p.add_argument("--pre-tokenizer", metavar="NAME", help="the BPE pre-tokenizer, when its hash is unknown")
    p.add_argument(
        "--chat-format", metavar="F", help="write this Cattery prompt format into the GGUF as its chat template"
    )
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("unpack", help="GGUF → Hugging Face checkpoint (dequantized), with its tokenizer")
    p.add_argument("src", metavar="IN.gguf")
    p.add_argument("-o", "--output", metavar="OUT_DIR", required=True)
    p.add_argument(
        "--dtype",
        choices=["F32", "F16", "BF16"],
        type=str.upper,
        help="the weights' type (default: as stored for F32/F16/BF16, F32 for quantized tensors: exact values)",
    )
    p.set_defaults(func=cmd_unpack)
