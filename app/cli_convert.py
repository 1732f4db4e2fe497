"""`cattery convert` (HF checkpoint → GGUF) and `cattery unpack` (GGUF → HF checkpoint).

Thin calls into `converters/hf_to_gguf.py` and `converters/unpack.py`; nothing heavy is
imported until a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from app.progress import ProgressPrinter


def _already_gguf(src: str) -> None:
    """`convert` takes a checkpoint folder; given a GGUF model (a file or a library name), say what does
    what the user likely wants instead of "not a folder"."""
    from app.cli import open_workspace
    from app.errors import CatteryError

    path = Path(src).expanduser()
    try:
        if path.is_dir():
            return
        found = open_workspace().resolve_model(src) if not path.exists() or path.suffix == ".gguf" else None
    except (CatteryError, OSError):
        return
    if found is not None and found.suffix.lower() == ".gguf":
        raise CatteryError(
            f"{src}: a GGUF model already ({found}); convert takes a Hugging Face checkpoint folder: "
            "`cattery quantize` makes other quants of it, `cattery unpack` turns it back into a checkpoint"
        )


def cmd_convert(args: argparse.Namespace) -> int:
    from converters.hf_to_gguf import convert

    _already_gguf(args.src)
    report = convert(
        Path(args.src),
        Path(args.output),
        outtype=args.outtype,
        pre_tokenizer=args.pre_tokenizer,
        chat_format=args.chat_format,
        progress=ProgressPrinter("convert"),
    )
    print(report.summary() if hasattr(report, "summary") else f"wrote {args.output}")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from app.cli import model_argument, open_workspace
    from converters.unpack import unpack

    src = model_argument(open_workspace(), args.src)
    out = unpack(src, Path(args.output).expanduser(), progress=ProgressPrinter("unpack"), dtype=args.dtype)
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
    p.add_argument("src", metavar="M", help="a .gguf path, a library name, or owner/repo[:QUANT|:file]")
    p.add_argument("-o", "--output", metavar="OUT_DIR", required=True, help="a new (or empty) folder")
    p.add_argument(
        "--dtype",
        choices=["F32", "F16", "BF16"],
        type=str.upper,
        help="the weights' type (default: as stored for F32/F16/BF16, F32 for quantized tensors: exact values)",
    )
    p.set_defaults(func=cmd_unpack)
