"""`cattery eval`: perplexity of a model over a text file, through `converters/perplexity.py`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# A perplexity text is a corpus sample (wikitext-2's test set is 1.3 MB); 256 MB is hours of
# evaluation on a CPU, and reading more would only fill the memory.
MAX_EVAL_TEXT = 256 << 20


def _read_text(path: Path) -> str:
    from app.untrusted import read_text_bounded

    return read_text_bounded(path, MAX_EVAL_TEXT, "text file")


def cmd_eval(args: argparse.Namespace) -> int:
    from app.cli import model_argument, open_workspace
    from app.engine.options import parse_gpu_layers
    from app.progress import ProgressPrinter
    from converters.perplexity import perplexity

    gpu_layers = parse_gpu_layers(args.gpu_layers)  # a bad value is refused before a download or a load
    path = model_argument(open_workspace(), args.model_ref)
    text = _read_text(Path(args.text))
    report = perplexity(
        path,
        text,
        n_ctx=args.ctx,
        threads=args.threads,
        chunks=args.chunks,
        progress=ProgressPrinter("eval", unit="chunks"),
        gpu_layers=gpu_layers,
    )
    if report.warning:
        print(f"cattery: warning: {report.warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"{path.name}: {report.summary()}")
    return 0


def add_parser(sub: Any) -> None:
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
    p.set_defaults(func=cmd_eval, loads_llama=True)
