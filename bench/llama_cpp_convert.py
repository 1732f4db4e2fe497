"""Cattery's converter against llama.cpp's own `convert_hf_to_gguf.py`, byte for byte.

The reference is the converter of the very llama.cpp that llama-cpp-python builds here:
its source release (an sdist, from the package registry) carries `vendor/llama.cpp`, and
the script runs from there with its own `gguf-py`, in a separate environment with what it
needs (torch, transformers, sentencepiece). Nothing of it is committed; it is fetched
into a cache folder the first time.

Fixtures: the bundled SmolLM2 GGUF unpacked (GPT-2-style BPE, GQA, tied embeddings) and
random llamas with a SentencePiece tokenizer trained here (MHA and GQA, tied and untied,
linear and llama3 RoPE scaling, added tokens), each at f32, f16, bf16 and q8_0.

    python bench/llama_cpp_convert.py [--cache DIR] [--reference-python PY]

Prints a line per conversion (identical, or the first metadata key or tensor that
differs) and writes bench/out/llama_cpp_convert.json and a row in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import append_result_row, machine, write_json  # noqa: E402

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
REFERENCE_PACKAGES = (
    "torch==2.13.0",  # the CPU build on this machine's disk; the converter only loads tensors with it
    "transformers==4.57.6",  # what llama.cpp's requirements-convert_hf_to_gguf.txt pins
    "sentencepiece",
    "protobuf<5",
    "numpy",
    "safetensors",
    "pyyaml",
    "requests",
    "tqdm",
)


def fetch_llama_cpp(cache: Path) -> Path:
    """vendor/llama.cpp of the installed llama-cpp-python's source release, extracted once."""
    release = version("llama-cpp-python")
    root = cache / f"llama_cpp_python-{release}" / "vendor" / "llama.cpp"
    if (root / "convert_hf_to_gguf.py").is_file() and (root / "conversion").is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(cache)]
    subprocess.run([*pip, f"llama-cpp-python=={release}"], check=True)
    sdist = cache / f"llama_cpp_python-{release}.tar.gz"
    prefix = f"llama_cpp_python-{release}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        script = prefix + "convert_hf_to_gguf.py"
        packages = (prefix + "gguf-py/", prefix + "conversion/")  # the script's own modules
        wanted = [m for m in tar.getmembers() if m.name == script or m.name.startswith(packages)]
        tar.extractall(cache, members=wanted, filter="data")
    return root


def reference_python(cache: Path) -> Path:
    python = cache / "venv" / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(cache / "venv")], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REFERENCE_PACKAGES], check=True)
    return python


def fixtures(work: Path) -> dict[str, Path]:
    from tests.hf_fixtures import llama3_end_of_turn, random_llama, unpacked_bundled

    bundled = unpacked_bundled(work)
    return {
        "bundled SmolLM2 (BPE, GQA, tied)": bundled,
        "Llama-3-like BPE (eot)": llama3_end_of_turn(
            random_llama(work / "llama3-bpe", hidden=32, ffn=32, n_head=2, n_kv_head=1, n_layer=1, bpe_from=bundled)
        ),
        "SentencePiece, GQA": random_llama(work / "sp-gqa", seed=1),
        "SentencePiece, MHA, tied": random_llama(work / "sp-mha-tied", n_kv_head=4, tied=True, seed=2),
        "linear RoPE ×2": random_llama(work / "rope-linear", rope_scaling={"type": "linear", "factor": 2.0}, seed=3),
        "llama3 RoPE": random_llama(
            work / "rope-llama3",
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 256,
            },
            seed=4,
        ),
        "added tokens": random_llama(work / "added", added_tokens=[("<|im_start|>", True), ("<tool>", False)], seed=5),
        "bf16 checkpoint": random_llama(work / "bf16", dtype="BF16", seed=6),
    }


def first_difference(ours: Path, theirs: Path) -> str:
    """Where two GGUF files part: a metadata key, a tensor, or only the bytes."""
    import numpy as np
    from gguf import GGUFReader

    a, b = GGUFReader(ours), GGUFReader(theirs)
    keys_a, keys_b = list(a.fields), list(b.fields)
    if keys_a != keys_b:
        only = sorted(set(keys_a) ^ set(keys_b))
        return f"metadata keys differ: {only[:4]}" if only else "metadata key order differs"
    for key in keys_a:
        if [bytes(p) for p in a.fields[key].parts] != [bytes(p) for p in b.fields[key].parts]:
            return f"metadata {key} differs"
    for ta, tb in zip(a.tensors, b.tensors, strict=False):
        if ta.name != tb.name or ta.tensor_type != tb.tensor_type:
            return f"tensor {ta.name} ({ta.tensor_type.name}) vs {tb.name} ({tb.tensor_type.name})"
        if not np.array_equal(ta.data.view(np.uint8), tb.data.view(np.uint8)):
            return f"tensor {ta.name}: data differs"
    return "bytes differ (padding or alignment)"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cattery-llama-cpp-reference")
    ap.add_argument("--reference-python", type=Path, help="a Python with torch and transformers (default: made)")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--only", metavar="TEXT", help="only the fixtures whose label contains TEXT")
    args = ap.parse_args()

    from converters.hf_to_gguf import convert

    llama_cpp = fetch_llama_cpp(args.cache)
    python = args.reference_python or reference_python(args.cache)
    env = {"PYTHONPATH": str(llama_cpp / "gguf-py"), "PATH": "/usr/bin:/bin", "HOME": str(args.cache)}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cattery-vs-llama-cpp-") as tmp:
        work = Path(tmp)
        for label, folder in fixtures(work / "models").items():
            if args.only and args.only not in label:
                continue
            for outtype in OUTTYPES:
                ours, theirs = work / "ours.gguf", work / "theirs.gguf"
                start = time.monotonic()
                convert(folder, ours, outtype=outtype)
                ours_s = time.monotonic() - start
                start = time.monotonic()
                script = llama_cpp / "convert_hf_to_gguf.py"
                ref = subprocess.run(
                    [str(python), str(script), str(folder), "--outfile", str(theirs), "--outtype", outtype],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                theirs_s = time.monotonic() - start
                if ref.returncode != 0:
                    verdict = "llama.cpp failed: " + (ref.stderr.strip().splitlines() or ["?"])[-1]
                elif sha256(ours) == sha256(theirs):
                    verdict = "identical"
                else:
                    verdict = first_difference(ours, theirs)
                row = {"model": label, "outtype": outtype, "verdict": verdict}
                rows.append({**row, "cattery_s": ours_s, "llama_cpp_s": theirs_s})
                print(f"{label:<34} {outtype:<5} {verdict}  (cattery {ours_s:.1f} s, llama.cpp {theirs_s:.1f} s)")
                ours.unlink(missing_ok=True)
                theirs.unlink(missing_ok=True)
    same = sum(r["verdict"] == "identical" for r in rows)
    print(f"{same} of {len(rows)} conversions byte-identical to llama.cpp's convert_hf_to_gguf.py")
    data = {"machine": machine(), "llama_cpp": str(llama_cpp), "results": rows}
    print(f"wrote {write_json('llama_cpp_convert', data)}")
    if not args.no_record:
        m = data["machine"]
        append_result_row(
            "Converting against llama.cpp's convert_hf_to_gguf.py (`python bench/llama_cpp_convert.py`)",
            ["date", "machine", "llama.cpp", "byte-identical", "different"],
            [
                time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                f"{m['cpu']}, {m['logical_cores']} cores",
                f"vendor of llama-cpp-python {m['llama_cpp_python']}",
                f"{same} of {len(rows)}",
                "; ".join(f"{r['model']} {r['outtype']}: {r['verdict']}" for r in rows if r["verdict"] != "identical")
                or "none",
            ],
        )
    return 0 if same == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
