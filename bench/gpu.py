"""GPU check: every layer placement through the paths a user takes, on a build with GPU offload.

For each placement (`auto`, `all`, half the layers, `0`) it
- chats one turn through the real CLI (`cattery chat --plain`, a child process, as a user),
- runs the decode bench (bench/decode.py's `measure`: Cattery's engine against a bare
  llama-cpp-python loop at the same placement) for tok/s and the Cattery/bare ratio,
- runs a chat long enough for the window to slide and checks that the KV cache was
  shifted, not re-evaluated (bench/window.py's `run`; issue 16's crash hit this path).

On a build without offload it prints one line saying it was skipped and exits 0;
`--rehearse` runs every step anyway (all on the CPU), to check the script itself.

    python bench/gpu.py [--model M] [--tokens 64] [--rounds 6] [--turns 14] [--ctx 1024] [--layers L,…] [--rehearse]

Writes bench/out/gpu.json; exits 1 when a step failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import devices, gpu_offload, machine, now, write_json  # noqa: E402


def chat_turn(path: Path, gpu_layers: str, home: Path, timeout: float = 600) -> dict[str, Any]:
    """One turn of `cattery chat --plain` in a child process; its banner line and its reply."""
    env = {**os.environ, "CATTERY_HOME": str(home)}
    start = time.perf_counter()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "chat",
            "--plain",
            "--model",
            str(path),
            "--gpu-layers",
            gpu_layers,
            "--max-tokens",
            "24",
        ],
        input="Hello! Say one short sentence about cats.\n/quit\n",
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    return {
        "returncode": r.returncode,
        "seconds": time.perf_counter() - start,
        "banner": next((line for line in lines if " · " in line), ""),
        "output_tail": "\n".join(lines[-6:]),
    }


def context_shift(path: Path, gpu_layers: str, turns: int, ctx: int) -> dict[str, Any]:
    """A chat past a full context at this placement: the window slides and the cache shifts."""
    from app.engine.engine import Engine
    from app.engine.options import LoadOptions, parse_gpu_layers
    from app.prompt.tokens import tokenizer_from
    from bench.window import run

    engine = Engine()
    try:
        report = engine.load(path, LoadOptions(ctx=ctx, gpu_layers=parse_gpu_layers(gpu_layers)))
        rows = run(engine, tokenizer_from(engine), turns, ctx, 128, True, f"shift {gpu_layers:>4}")
    finally:
        engine.close()
    shifted = sum(r["shifted"] for r in rows)
    return {"placement": report.placement, "turns": len(rows), "shifted_tokens": shifted, "ok": shifted > 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .gguf path (default: the bundled model)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--turns", type=int, default=14)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--rehearse", action="store_true", help="run every step even without GPU offload")
    parser.add_argument("--out", type=Path, help="the JSON file (default bench/out/gpu.json)")
    parser.add_argument(
        "--layers", help="comma-separated placements to run (default: auto,all,half the layers,0)", default=None
    )
    args = parser.parse_args()

    from app.engine.metadata import read_model_info
    from app.hub.library import resolve_model
    from bench.decode import measure

    offload = gpu_offload("bench/gpu.py", args.rehearse)
    if offload is None:
        return 0
    path = resolve_model(args.model, [])
    n_layers = (read_model_info(path).block_count or 0) + 1
    placements = ["auto", "all", str(max(1, n_layers // 2)), "0"]
    if args.layers:  # a rehearsal of the script need not run every placement (they are all CPU there)
        placements = [p.strip() for p in args.layers.split(",") if p.strip()]
    steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cattery-gpu-") as home:
        for layers in placements:
            step: dict[str, Any] = {"gpu_layers": layers}
            try:
                step["chat"] = chat_turn(path, layers, Path(home))
                step["decode"] = measure(
                    path,
                    gpu_layers=layers,
                    tokens=args.tokens,
                    rounds=args.rounds,
                    ctx=args.ctx,
                    log=lambda line: print(line, flush=True),
                )
                step["shift"] = context_shift(path, layers, args.turns, args.ctx)
                step["ok"] = step["chat"]["returncode"] == 0 and step["shift"]["ok"]
            except Exception as e:  # a failed step is reported; the others still run
                step["error"] = f"{type(e).__name__}: {e}"
                step["ok"] = False
            steps.append(step)
            d = step.get("decode", {})
            print(
                f"--gpu-layers {layers:>4}: {d.get('placement', '?')}; "
                f"chat rc {step.get('chat', {}).get('returncode')}; "
                f"cattery {d.get('cattery_median', 0):.1f} tok/s, bare {d.get('bare_median', 0):.1f} tok/s, "
                f"ratio {d.get('ratio', 0):.3f}; shifted {step.get('shift', {}).get('shifted_tokens')} tokens"
                + (f"; ERROR {step['error']}" if "error" in step else ""),
                flush=True,
            )
    result = {
        "benchmark": "gpu",
        "when": now(),
        "machine": machine(),
        "model": path.name,
        "offload_supported": offload,
        "devices": devices(),
        "steps": steps,
        "ok": all(s["ok"] for s in steps),
    }
    out = write_json("gpu", result, args.out)
    print(f"{'all steps passed' if result['ok'] else 'FAILED'}; wrote {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
