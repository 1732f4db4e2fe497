"""Peak memory and speed of converting and merging a ~1B-parameter checkpoint.

The script makes two random llama checkpoints (bf16 safetensors in 2 GB shards, the
shape of a small Llama: 2048 wide, 16 layers, 5632 FFN, 32000 tokens; ~0.85 B
parameters), then runs, each in a child process whose peak RSS the kernel reports
(`wait4`):

- `convert`: checkpoint → F16 GGUF;
- `merge`: a two-model linear merge into a safetensors folder;
- `merge-gguf`: the same merge written straight into an F16 GGUF.

Targets (issue 7): peak RSS ≤ 2 × the largest tensor in f32 + 300 MB for convert and
≤ 3 × + 300 MB for a two-model merge; conversion ≥ 150 MB/s of input.

    python bench/convert.py [--layers 16] [--keep DIR]

Writes bench/out/convert.json and a row in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import append_result_row, machine, now, write_json

ROOT = Path(__file__).resolve().parent.parent
MB = 1000**2


def make_checkpoint(folder: Path, *, layers: int, hidden: int, ffn: int, vocab: int, seed: int) -> int:
    """A random llama in bf16 safetensors; its size in bytes."""
    import numpy as np

    from converters.checkpoint import ShardedWriter, TensorPlan

    heads = hidden // 64
    kv = max(1, heads // 4)
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (kv * 64, hidden)),
            (p + "self_attn.v_proj.weight", (kv * 64, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "mlp.gate_proj.weight", (ffn, hidden)),
            (p + "mlp.up_proj.weight", (ffn, hidden)),
            (p + "mlp.down_proj.weight", (hidden, ffn)),
            (p + "input_layernorm.weight", (hidden,)),
            (p + "post_attention_layernorm.weight", (hidden,)),
        ]
    shapes += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    rng = np.random.default_rng(seed)
    plan = [TensorPlan(n, "BF16", s) for n, s in shapes]
    with ShardedWriter(folder, plan, max_shard=2 * 1000**3) as w:
        for name, shape in shapes:
            data = np.ones(shape, np.float32) if len(shape) == 1 else rng.standard_normal(shape, np.float32) * 0.02
            w.write(name, data)
        w.close()
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def add_tokenizer(folder: Path) -> None:
    """A SentencePiece tokenizer of the checkpoint's vocabulary size (the converter needs one)."""
    from tests.hf_fixtures import train_sentencepiece

    # Fewer pieces than the embedding's rows: the converter pads the vocabulary as llama.cpp's does.
    train_sentencepiece(folder / "tokenizer.model", vocab_size=2000)
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))


def child(argv: list[str]) -> dict[str, float]:
    """Run one step in a child process: (seconds, peak RSS in bytes).

    The peak is the child's own VmHWM, read by itself at the end: getrusage's ru_maxrss of a
    child starts from the parent's size at the fork, which here would be the generator's.
    """
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", *argv], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"step {argv[0]} failed: {done.stderr[-2000:]}")
    peak = int(done.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "peak_rss": peak}


def high_water_mark() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_child(argv: list[str]) -> None:
    step = argv[0]
    if step == "convert":
        from converters.hf_to_gguf import convert

        convert(Path(argv[1]), Path(argv[2]), outtype="f16")
    elif step == "merge":
        from converters.merge import run_merge

        run_merge(Path(argv[1]), Path(argv[2]))
    else:
        raise SystemExit(f"unknown step {step}")
    print(high_water_mark())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_child(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--ffn", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--keep", metavar="DIR", help="make the checkpoints here and keep them")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cattery-bench-convert-"))
    try:
        shape = {"layers": args.layers, "hidden": args.hidden, "ffn": args.ffn, "vocab": args.vocab}
        a, b = work / "a", work / "b"
        sizes = {}
        for folder, seed in ((a, 1), (b, 2)):
            if not (folder / "config.json").is_file():
                print(f"making {folder} …", file=sys.stderr, flush=True)
                sizes[folder.name] = make_checkpoint(folder, seed=seed, **shape)
                add_tokenizer(folder)
            else:
                sizes[folder.name] = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        largest_f32 = max(args.vocab * args.hidden, args.ffn * args.hidden) * 4
        params = sizes["a"] // 2
        recipe = work / "merge.toml"
        recipe.write_text(f'base = "{a}"\n[[steps]]\nmethod = "linear"\nmodels = ["{b}"]\nweights = [0.6, 0.4]\n')
        results = {}
        for name, argv in (
            ("convert", ["convert", str(a), str(work / "a.F16.gguf")]),
            ("merge", ["merge", str(recipe), str(work / "merged")]),
            ("merge-gguf", ["merge", str(recipe), str(work / "merged.F16.gguf")]),
        ):
            for stale in (work / "a.F16.gguf", work / "merged", work / "merged.F16.gguf"):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
            print(f"{name} …", file=sys.stderr, flush=True)
            results[name] = child(argv)
        convert_limit = 2 * largest_f32 + 300 * MB
        merge_limit = 3 * largest_f32 + 300 * MB
        result = {
            "benchmark": "convert",
            "when": now(),
            "machine": machine(),
            "parameters": params,
            "input_bytes": sizes["a"],
            "largest_tensor_f32": largest_f32,
            "steps": results,
            "convert_mb_per_s": sizes["a"] / MB / results["convert"]["seconds"],
            "limits": {"convert_rss": convert_limit, "merge_rss": merge_limit, "convert_mb_per_s": 150},
        }
        out = write_json("convert", result)
        for name, r in results.items():
            limit = convert_limit if name == "convert" else merge_limit
            print(f"{name:>10}: {r['seconds']:.1f} s, peak RSS {r['peak_rss'] / MB:.0f} MB (limit {limit / MB:.0f} MB)")
        print(f"convert throughput {result['convert_mb_per_s']:.0f} MB/s of input (target 150); wrote {out}")
        if not args.no_record:
            m = result["machine"]
            append_result_row(
                "Converting and merging (`python bench/convert.py`)",
                [
                    "date",
                    "machine",
                    "model",
                    "convert: time, MB/s, peak RSS (limit)",
                    "merge → folder: time, peak RSS (limit)",
                    "merge → GGUF: time, peak RSS (limit)",
                ],
                [
                    result["when"],
                    f"{m['cpu']}, {m['logical_cores']} cores",
                    f"{params / 1e9:.2f} B params, bf16, {sizes['a'] / 1e9:.2f} GB",
                    f"{results['convert']['seconds']:.1f} s, {result['convert_mb_per_s']:.0f} MB/s, "
                    f"{results['convert']['peak_rss'] / MB:.0f} MB ({convert_limit / MB:.0f})",
                    f"{results['merge']['seconds']:.1f} s, {results['merge']['peak_rss'] / MB:.0f} MB "
                    f"({merge_limit / MB:.0f})",
                    f"{results['merge-gguf']['seconds']:.1f} s, {results['merge-gguf']['peak_rss'] / MB:.0f} MB "
                    f"({merge_limit / MB:.0f})",
                ],
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
