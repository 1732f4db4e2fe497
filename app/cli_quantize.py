"""`cattery quantize`: GGUF → one quantized GGUF per `--type`, through `converters/quantize.py`.

The flags become a `TypeOptions` here, once; every estimate is printed and every refusal
made before the first file is written, and one progress line fills once over all the files.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.progress import Progress
    from converters.quant_types import QuantType


def _named(ref: str) -> bool:
    """Whether a model argument is a name (library or hub) rather than a path to a file."""
    from pathlib import Path

    try:
        return not Path(ref).expanduser().is_file()
    except (OSError, ValueError):
        return True


def cmd_quantize(args: argparse.Namespace) -> int:
    from app.cli import model_argument, open_workspace
    from app.progress import ProgressPrinter

    ws = open_workspace()
    named = _named(args.src)
    args.src = str(model_argument(ws, args.src))
    if named and not args.output:
        # A model known by name lives in the library, the HF cache or the bundled package: its quants
        # go into the library (where `models list` shows them), not beside a cache blob or in site-packages.
        ws.paths.models_dir.mkdir(parents=True, exist_ok=True)
        args.output = str(ws.paths.models_dir) + os.sep
    return quantize_files(args, ProgressPrinter("quantize"))


def _unique_types(names: Sequence[str]) -> list[QuantType]:
    from converters.quant_types import lookup

    out: list[QuantType] = []
    for name in names:
        qt = lookup(name)
        if qt not in out:
            out.append(qt)
    return out


def quantize_files(args: argparse.Namespace, progress: Progress | None = None) -> int:
    """Every `--type` of one input: estimates first (all that `--dry-run` does), then the files."""
    from app.resources import require_disk
    from converters.imatrix import read_imatrix
    from converters.quant_types import TypeOptions
    from converters.quantize import (
        check_imatrix,
        check_requantize,
        estimate,
        input_sizes,
        output_paths,
        quantize,
        read_source,
    )

    src = Path(args.src)
    qtypes = _unique_types(args.types)
    outs = output_paths(src, Path(args.output) if args.output else None, qtypes)
    source = read_source(src)
    imat = read_imatrix(Path(args.imatrix)) if args.imatrix else None
    options = TypeOptions.parse(
        leave_output_tensor=args.leave_output_tensor,
        pure=args.pure,
        tensor_types=args.tensor_type or [],
        output_tensor_type=args.output_tensor_type,
        token_embedding_type=args.token_embedding_type,
    )
    estimates = [estimate(source, qt, options, imatrix=imat) for qt in qtypes]
    for est, out in zip(estimates, outs, strict=True):
        print(f"{est.summary()} → {out}", file=sys.stdout if args.dry_run else sys.stderr)
    if args.dry_run:
        missing = [e.qtype.name for e in estimates if e.needs_imatrix and imat is None]
        if missing:
            print(f"without --imatrix llama.cpp will refuse {', '.join(missing)}", file=sys.stderr)
        return 0
    for est in estimates:  # every refusal before the first file is written
        check_requantize(source, est, args.allow_requantize)
        check_imatrix(source, est, imat)
    folder = outs[0].parent
    require_disk(folder, sum(e.size for e in estimates), "the outputs" if len(outs) > 1 else outs[0].name)
    per_file = len(source.tensors)
    src_bytes = sum(input_sizes(source).values())
    for i, (qt, out) in enumerate(zip(qtypes, outs, strict=True)):
        # one running count over all the files, so a progress bar fills once
        step = None
        if progress is not None:
            step = lambda done, _total, what, nbytes=0, _tb=0, i=i: progress(  # noqa: E731
                i * per_file + done, per_file * len(outs), what, i * src_bytes + nbytes, src_bytes * len(outs)
            )
        report = quantize(
            src,
            out,
            qt.name,
            options=options,
            threads=args.threads,
            imatrix=imat,
            progress=step,
            allow_requantize=args.allow_requantize,
        )
        end_line = getattr(progress, "end_line", None)  # the progress line stays above the summary
        if end_line is not None:
            end_line()
        print(report.summary())
    return 0


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
