"""Decode speed: Cattery's engine against a bare llama-cpp-python loop, same model and settings.

Both sides load the same GGUF with the same context, batch and threads, evaluate the
same prompt, and generate the same number of tokens greedily with end-of-text
banned (so every run decodes exactly --tokens tokens). Runs alternate in one process
(ABBA order) so that the machine's state affects both alike; a first run of each is
a warm-up and is not counted. Decode speed is tokens after the first, divided by the
time from the first token sampled to the last.

    python bench/decode.py [--model M] [--tokens 128] [--rounds 24] [--threads N] [--gpu-layers auto|all|N]

`--gpu-layers` applies to both sides: Cattery's engine loads with it (`auto` and `all` as
`cattery chat` takes them), and the bare loop then offloads exactly the layers the engine
reports offloaded, so a GPU build compares GPU with GPU (or the same split), never GPU
with CPU. On a build without offload both sides run on the CPU.

Writes bench/out/decode.json (or --out) and a row in bench/RESULTS.md (target: ratio >= 0.97).
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import append_result_row, machine, median, now, write_json

PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nTell me a long story about a cat who learns to sail.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


class BareLoop:
    """The reference: llama-cpp-python's low-level API and nothing else."""

    def __init__(self, path: Path, n_ctx: int, n_batch: int, threads: int, gpu_layers: int = 0) -> None:
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = gpu_layers
        self.gpu_layers = gpu_layers
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"bare loop: llama_model_load_from_file failed for {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_batch, n_batch
        cp.n_threads = cp.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.mem = L.llama_get_memory(self.ctx)
        n_vocab = L.llama_vocab_n_tokens(self.vocab)
        eog = [t for t in range(n_vocab) if L.llama_vocab_is_eog(self.vocab, t)]
        biases = (L.llama_logit_bias * len(eog))()
        for i, t in enumerate(eog):
            biases[i].token, biases[i].bias = t, float("-inf")
        self.chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_logit_bias(n_vocab, len(eog), biases))
        L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_greedy())
        data = PROMPT.encode()
        buf = (L.llama_token * (len(data) + 8))()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        self.prompt = list(buf[:n])

    def run(self, n_tokens: int) -> tuple[float, str]:
        L = self.L
        L.llama_memory_clear(self.mem, True)
        arr = (L.llama_token * len(self.prompt))(*self.prompt)
        L.llama_decode(self.ctx, L.llama_batch_get_one(arr, len(self.prompt)))
        one = (L.llama_token * 1)()
        piece = ctypes.create_string_buffer(256)
        out = []
        token = L.llama_sampler_sample(self.chain, self.ctx, -1)
        t_first = time.perf_counter()
        for _ in range(n_tokens - 1):
            n = L.llama_token_to_piece(self.vocab, token, piece, 256, 0, False)
            out.append(piece.raw[:n])
            one[0] = token
            L.llama_decode(self.ctx, L.llama_batch_get_one(one, 1))
            token = L.llama_sampler_sample(self.chain, self.ctx, -1)
        t_last = time.perf_counter()
        n = L.llama_token_to_piece(self.vocab, token, piece, 256, 0, False)
        out.append(piece.raw[:n])
        return (n_tokens - 1) / (t_last - t_first), b"".join(out).decode("utf-8", "replace")

    def close(self) -> None:
        self.L.llama_sampler_free(self.chain)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def measure(
    path: Path,
    *,
    gpu_layers: str = "auto",
    tokens: int = 128,
    rounds: int = 24,
    ctx: int = 2048,
    batch: int = 512,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Both sides on one model at one layer placement; the result as decode.json holds it.

    `gpu_layers` is the text `cattery chat --gpu-layers` takes. The engine loads first and
    its report (what llama.cpp says it offloaded) is the count the bare loop gets, so with
    `auto` both sides hold the same layers on the GPU whatever auto chose.
    """
    from app.engine.engine import Engine, _physical_cores
    from app.engine.options import LoadOptions, SamplerSettings, parse_gpu_layers

    threads = threads or _physical_cores()
    engine = Engine()
    report = engine.load(
        path,
        LoadOptions(
            ctx=ctx, batch=batch, threads=threads, threads_batch=threads, gpu_layers=parse_gpu_layers(gpu_layers)
        ),
    )
    log(f"cattery engine: {report.placement}, ctx {report.n_ctx}, threads {report.threads}")
    bare = BareLoop(path, ctx, batch, threads, gpu_layers=report.gpu_layers)
    log(f"bare loop: n_gpu_layers {bare.gpu_layers}")
    sampler = SamplerSettings(temperature=0.0, repeat_penalty=1.0, ban_eos=True, max_tokens=tokens)
    texts: dict[str, str] = {}

    def run_cattery() -> float:
        engine.reset()
        gen = engine.generate(PROMPT, sampler)
        texts["cattery"] = gen.result()
        assert gen.stats is not None
        return gen.stats.decode_tokens_per_second

    def run_bare() -> float:
        tps, texts["bare"] = bare.run(tokens)
        return tps

    cattery: list[float] = []
    reference: list[float] = []
    try:
        run_cattery(), run_bare()  # warm-up, not counted
        for round_no in range(1, rounds + 1):
            # ABBA order: a drift in the machine's speed during a pair hits both sides alike.
            if round_no % 2:
                tps_c, tps_b = run_cattery(), run_bare()
            else:
                tps_b, tps_c = run_bare(), run_cattery()
            cattery.append(tps_c)
            reference.append(tps_b)
            log(f"round {round_no}: cattery {tps_c:.2f} tok/s, bare loop {tps_b:.2f} tok/s")
    finally:
        engine.close()
        bare.close()

    ratio = median(cattery) / median(reference) if median(reference) else 0.0
    pair_ratio = median([c / b for c, b in zip(cattery, reference, strict=True) if b])
    return {
        "benchmark": "decode",
        "when": now(),
        "machine": machine(),
        "model": path.name,
        "settings": {
            "tokens": tokens,
            "rounds": rounds,
            "ctx": ctx,
            "batch": batch,
            "threads": threads,
            "sampler": "greedy, EOS banned",
            "gpu_layers_asked": gpu_layers,
            "gpu_layers": report.gpu_layers,
            "bare_gpu_layers": bare.gpu_layers,
            "n_layers": report.n_layers + 1,
            "offload_supported": report.offload_supported,
        },
        "placement": report.placement,
        "cattery_tokens_per_second": cattery,
        "bare_tokens_per_second": reference,
        "cattery_median": median(cattery),
        "bare_median": median(reference),
        "ratio": ratio,
        "median_pair_ratio": pair_ratio,
        "target_ratio": 0.97,
        "same_text": texts["cattery"] == texts["bare"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .gguf path (default: the bundled model)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--gpu-layers",
        default="0",
        metavar="auto|all|N",
        help="layers on the GPU for BOTH sides, as `cattery chat --gpu-layers` (default 0: the CPU)",
    )
    parser.add_argument("--out", type=Path, help="the JSON file (default bench/out/decode.json)")
    parser.add_argument("--no-record", action="store_true", help="do not add a row to bench/RESULTS.md")
    args = parser.parse_args()

    from app.engine.options import parse_gpu_layers
    from app.errors import CatteryError
    from app.hub.library import resolve_model

    try:
        parse_gpu_layers(args.gpu_layers)
        path = resolve_model(args.model, [])
    except CatteryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = measure(
        path,
        gpu_layers=args.gpu_layers,
        tokens=args.tokens,
        rounds=args.rounds,
        ctx=args.ctx,
        batch=args.batch,
        threads=args.threads,
        log=lambda line: print(line, flush=True),
    )
    cattery, reference = result["cattery_tokens_per_second"], result["bare_tokens_per_second"]
    ratio, pair_ratio = result["ratio"], result["median_pair_ratio"]
    threads = result["settings"]["threads"]
    out = write_json("decode", result, args.out)
    print(
        f"{result['placement']}: cattery {median(cattery):.2f} tok/s, bare loop {median(reference):.2f} tok/s, "
        f"ratio {ratio:.3f}, median of pair ratios {pair_ratio:.3f} (target >= 0.97); "
        f"same text: {result['same_text']}; wrote {out}"
    )
    if not args.no_record:
        m = result["machine"]
        append_result_row(
            "Decode speed: Cattery engine vs bare llama-cpp-python loop (`python bench/decode.py`)",
            [
                "date",
                "machine",
                "llama-cpp-python",
                "model",
                "tokens × rounds",
                "threads",
                "Cattery tok/s",
                "bare tok/s",
                "ratio of medians",
                "median pair ratio",
            ],
            [
                result["when"],
                f"{m['cpu']}, {m['logical_cores']} cores, {m['ram_gib']} GiB"
                + ("" if result["placement"].startswith("CPU") else f", {result['placement']}"),
                m["llama_cpp_python"],
                path.name,
                f"{args.tokens} × {args.rounds}",
                str(threads),
                f"{median(cattery):.2f}",
                f"{median(reference):.2f}",
                f"{ratio:.3f}",
                f"{pair_ratio:.3f}",
            ],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
