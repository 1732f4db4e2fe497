"""Cattery's merges against mergekit 0.1.5 and PEFT, every tensor compared in ulps.

The references run in an environment of their own (made once in a cache folder: torch, a
CPU build where one can be had, mergekit==0.1.5, PEFT): mergekit through its own command,
`mergekit-yaml`, and PEFT's `merge_and_unload` for LoRA adapters (which PEFT itself makes
here with random weights; a weight is PEFT's `set_scale`). Cattery runs `cattery merge` on
the equivalent recipe. The models are small random llamas (five layers, SentencePiece
tokenizers trained here): `a`, `b` a fine-tune of `a` (its weights nudged, as real merges
are of relatives), `c` unrelated, all f32, and two bf16 ones.

    python bench/mergekit_compare.py [--cache DIR] [--reference-python PY] [--no-record] [--only TEXT] [--keep DIR]

Prints a table (per case: how many tensors are bit-identical, the largest difference in
ulps of the stored type, elementwise and at the tensor's scale) and writes
bench/out/mergekit_compare.json and a row in bench/RESULTS.md. Linear merges, gradients and
LoRA are judged value by value; SLERP at the tensor's scale, beside mergekit's own spread
between thread counts (SCALE_NOTE says why). The same file runs on the reference side
(`--reference JOB.json`), where only the standard library, torch, mergekit and PEFT are imported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MERGEKIT = "mergekit==0.1.5"
REFERENCE_PACKAGES = (MERGEKIT, "peft")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
FEW_ULPS = 4  # the goal: every tensor within this many ulps of the reference

# -- the reference side (runs in the reference environment) ----------------------------------


def _ref_adapter(task: dict[str, Any]) -> None:
    """A PEFT LoRA adapter for `base`, made by PEFT with random A and B (init_lora_weights=False)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(task["seed"])
    model = AutoModelForCausalLM.from_pretrained(task["base"], dtype=torch.float32)
    config = LoraConfig(init_lora_weights=False, **task["config"])
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(task["out"])


def _ref_peft(task: dict[str, Any]) -> None:
    """PEFT's merge_and_unload of an adapter whose every layer's scaling is multiplied by `weight`."""
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(task["base"], dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, task["adapter"])
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            # scaling = weight · lora_alpha / r (/ √r with rsLoRA); scale_layer would skip embedding LoRAs
            module.set_scale("default", task["weight"])
    merged = peft_model.merge_and_unload()
    out = Path(task["out"])
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in merged.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    shutil.copy(Path(task["base"]) / "config.json", out / "config.json")


def _ref_mergekit(task: dict[str, Any]) -> None:
    """mergekit's own command on a YAML config (JSON is YAML)."""
    config = Path(task["out"] + ".yml")
    config.write_text(json.dumps(task["config"], indent=1))
    command = [str(Path(sys.executable).with_name("mergekit-yaml")), str(config), task["out"]]
    command += ["--lora-merge-cache", task["cache"], "--no-copy-tokenizer", "--quiet"]
    if task.get("threads"):
        command += ["--num-threads", str(task["threads"])]
    subprocess.run(command, check=True)


def reference_main(job: Path) -> int:
    tasks = json.loads(job.read_text())
    runners = {"adapter": _ref_adapter, "peft": _ref_peft, "mergekit": _ref_mergekit}
    versions = {}
    from importlib.metadata import version

    for package in ("torch", "mergekit", "peft", "transformers"):
        versions[package] = version(package)
    for task in tasks:
        runners[task["kind"]](task)
    job.with_suffix(".versions.json").write_text(json.dumps(versions))
    return 0


# -- the environment -------------------------------------------------------------------------


def reference_python(cache: Path) -> Path:
    """A venv with torch (the CPU build from PyTorch's index if it answers, else PyPI's), mergekit and PEFT."""
    python = cache / "venv" / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(cache / "venv")], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    try:
        quick = ["--timeout", "30", "--retries", "1"]
        cpu = subprocess.run([*pip, *quick, "torch", "--index-url", TORCH_CPU_INDEX], check=False, timeout=1800)
        cpu_ok = cpu.returncode == 0
    except subprocess.TimeoutExpired:
        cpu_ok = False
    if not cpu_ok:
        print("PyTorch's CPU index did not answer; torch from PyPI (a larger download)", file=sys.stderr)
        subprocess.run([*pip, "torch"], check=True)
    subprocess.run([*pip, *REFERENCE_PACKAGES], check=True)
    return python


# -- the models --------------------------------------------------------------------------------


def nudged(source: Path, folder: Path, seed: int, scale: float) -> Path:
    """A relative of `source`: every tensor plus noise of `scale` times its own spread (a "fine-tune")."""
    import numpy as np

    from converters.checkpoint import Checkpoint, ShardedWriter, TensorPlan

    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    ck = Checkpoint.open(source)
    rng = np.random.default_rng(seed)
    names = sorted(ck.names())
    with ShardedWriter(folder, [TensorPlan(n, "F32", ck.tensors[n].shape) for n in names]) as w:
        for n in names:
            x = np.array(ck.f32(n), dtype=np.float32)
            w.write(n, (x + rng.standard_normal(x.shape) * scale * float(x.std())).astype(np.float32))
        w.close()
    ck.close()
    return folder


def make_models(root: Path) -> dict[str, Path]:
    """Five layers, hidden 128: the MLP and embedding tensors are large enough (32768 values and
    more) for PyTorch to split its reductions over threads, as it does on real models."""
    from tests.hf_fixtures import random_llama

    shape = {"n_layer": 5, "hidden": 128, "ffn": 256, "n_head": 4, "n_kv_head": 2}
    a = random_llama(root / "a", seed=1, **shape)
    return {
        "a": a,
        "b": nudged(a, root / "b", seed=2, scale=0.05),
        "c": random_llama(root / "c", seed=3, **shape),
        "a16": random_llama(root / "a16", seed=4, dtype="BF16", **shape),
        "c16": random_llama(root / "c16", seed=5, dtype="BF16", **shape),
    }


# -- the cases ---------------------------------------------------------------------------------

SLERP_T = [
    {"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
    {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0.0]},
    {"value": 0.5},
]
GRADIENT_B = [
    {"filter": "self_attn", "value": [0.0, 1.0]},
    {"filter": "mlp", "value": [1.0, 0.2, 0.0]},
    {"value": 0.5},
]
LAYER_VALUES = [0.9, 0.2, 0.0]
LORA_1 = {"r": 8, "lora_alpha": 12, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"]}
LORA_2 = {
    "r": 6,
    "lora_alpha": 10,
    "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj", "embed_tokens"],
    "use_rslora": True,
    "rank_pattern": {"v_proj": 3},
    "alpha_pattern": {"layers.1.self_attn.q_proj": 7},
}


def mk_models(models: dict[str, Path], weights: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"model": str(models[k]), "parameters": {"weight": w}} for k, w in weights.items()]


def cases(models: dict[str, Path], work: Path) -> list[dict[str, Any]]:
    """Each case: a Cattery recipe (a TOML table), the reference task that makes the same model, and how
    it is judged: "bits" (every value within FEW_ULPS of the reference's) or "scale" (see SCALE_NOTE)."""
    a, b, c = (str(models[k]) for k in "abc")
    linear = {"merge_method": "linear", "dtype": "float32", "out_dtype": "float32"}

    def mergekit_linear(weights: dict[str, Any], **parameters: Any) -> dict[str, Any]:
        config = linear | {"models": mk_models(models, weights)}
        return {"kind": "mergekit", "config": config | ({"parameters": parameters} if parameters else {})}

    out: list[dict[str, Any]] = [
        {
            "case": "linear, 3 models",
            "recipe": {"base": a, "steps": [{"method": "linear", "models": [b, c], "weights": [0.5, 0.3, 0.2]}]},
            "reference": mergekit_linear({"a": 0.5, "b": 0.3, "c": 0.2}),
        },
        {
            "case": "linear, weights summing to 1.3",
            "recipe": {"base": a, "steps": [{"method": "linear", "models": [c], "weights": [0.7, 0.6]}]},
            "reference": mergekit_linear({"a": 0.7, "c": 0.6}),
        },
        {
            "case": "linear, normalize = false",
            "recipe": {
                "base": a,
                "steps": [{"method": "linear", "models": [b, c], "weights": [0.6, 0.25, 0.15], "normalize": False}],
            },
            "reference": mergekit_linear({"a": 0.6, "b": 0.25, "c": 0.15}, normalize=False),
        },
        {
            "case": "linear, bf16 checkpoints",
            "recipe": {
                "base": str(models["a16"]),
                "steps": [{"method": "linear", "models": [str(models["c16"])], "weights": [0.7, 0.3]}],
            },
            "reference": {
                "kind": "mergekit",
                "config": {"merge_method": "linear", "models": mk_models(models, {"a16": 0.7, "c16": 0.3})},
            },
        },
        {
            "case": "linear, gradient weights with filters",
            "recipe": {"base": a, "steps": [{"method": "linear", "models": [c], "weights": [[0.2, 0.8], GRADIENT_B]}]},
            "reference": mergekit_linear({"a": [0.2, 0.8], "c": GRADIENT_B}),
        },
        {
            "case": "gradient (layer) = linear (1 − v, v)",
            "recipe": {
                "base": a,
                "steps": [{"method": "gradient", "mode": "layer", "model": c, "values": LAYER_VALUES}],
            },
            "reference": mergekit_linear({"a": [1 - v for v in LAYER_VALUES], "c": LAYER_VALUES}, normalize=False),
        },
    ]
    slerp = {"merge_method": "slerp", "base_model": a, "dtype": "float32", "out_dtype": "float32"}
    for other, label in (("b", "a fine-tune"), ("c", "unrelated")):
        config = slerp | {"parameters": {"t": SLERP_T}, "models": [{"model": a}, {"model": str(models[other])}]}
        out.append(
            {
                "case": f"slerp, filtered t lists ({label})",
                "recipe": {"base": a, "steps": [{"method": "slerp", "model": str(models[other]), "t": SLERP_T}]},
                "reference": {"kind": "mergekit", "config": config},
                "judged": "scale",
                "spread": {"kind": "mergekit", "config": config, "threads": 1},
            }
        )
    lora1, lora2 = str(work / "lora1"), str(work / "lora2")
    for adapter, label, weights in (
        (lora1, "r 8, alpha 12", (1.0, 0.25, 0.7)),
        (lora2, "rsLoRA, rank/alpha patterns, embeddings", (1.0, 0.25)),
    ):
        for weight in weights:
            out.append(
                {
                    "case": f"lora ×{weight:g} ({label}) vs PEFT",
                    "recipe": {"base": a, "steps": [{"method": "lora", "adapter": adapter, "weight": weight}]},
                    "reference": {"kind": "peft", "base": a, "adapter": adapter, "weight": weight},
                }
            )
    out.append(
        {
            "case": "lora ×1 (r 8, alpha 12) vs mergekit a+lora",
            "recipe": {"base": a, "steps": [{"method": "lora", "adapter": lora1, "weight": 1.0}]},
            "reference": {
                "kind": "mergekit",
                "config": {"merge_method": "passthrough", "dtype": "float32", "models": [{"model": f"{a}+{lora1}"}]},
            },
        }
    )
    return out


def adapters(models: dict[str, Path], work: Path) -> list[dict[str, Any]]:
    return [
        {"kind": "adapter", "base": str(models["a"]), "config": LORA_1, "seed": 11, "out": str(work / "lora1")},
        {"kind": "adapter", "base": str(models["a"]), "config": LORA_2, "seed": 12, "out": str(work / "lora2")},
    ]


# -- comparing --------------------------------------------------------------------------------


SCALE_NOTE = (
    "SLERP is judged at the tensor's scale (the largest difference in ulps of the tensor's largest value): "
    "mergekit takes the angle from float32 sums whose last bits change with PyTorch's thread count, so its "
    "own results differ between machines, by as much where a value is a near-cancellation of two terms"
)


def ulp_distance(x: Any, y: Any) -> Any:
    """How many float32 values lie between x and y, elementwise (0: the same bits, or ±0)."""
    import numpy as np

    def ordered(v: Any) -> Any:
        bits = np.ascontiguousarray(v, dtype=np.float32).view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)

    return np.abs(ordered(x) - ordered(y))


def compare(ours: Path, theirs: Path) -> dict[str, Any]:
    """Every tensor of two checkpoints: the largest difference in ulps of the stored type, elementwise and at
    the tensor's scale; how many are bit-identical; names found in only one of them."""
    import numpy as np

    from converters.checkpoint import Checkpoint

    a, b = Checkpoint.open(ours), Checkpoint.open(theirs)
    names_a, names_b = set(a.names()), set(b.names())
    differences = sorted(names_a ^ names_b)
    per_tensor: dict[str, dict[str, Any]] = {}
    for name in sorted(names_a & names_b):
        x, y = np.asarray(a.f32(name), np.float32), np.asarray(b.f32(name), np.float32)
        if x.shape != y.shape or a.tensors[name].dtype != b.tensors[name].dtype:
            differences.append(f"{name} {a.tensors[name].dtype}{x.shape} vs {b.tensors[name].dtype}{y.shape}")
            continue
        step = 65536 if a.tensors[name].dtype == "BF16" else 2**13 if a.tensors[name].dtype == "F16" else 1
        ulps = int(ulp_distance(x, y).max()) // step if x.size else 0
        top = np.float32(np.abs(y).max()) if y.size else np.float32(0)
        spacing = float(np.spacing(top)) * step if top else float(np.finfo(np.float32).tiny)
        scaled = float(np.abs(x.astype(np.float64) - y).max()) / spacing if x.size else 0.0
        per_tensor[name] = {"dtype": a.tensors[name].dtype, "max_ulps": ulps, "max_ulps_at_scale": round(scaled, 3)}
    a.close()
    b.close()
    worst = max(per_tensor, key=lambda n: (per_tensor[n]["max_ulps"], per_tensor[n]["max_ulps_at_scale"]), default="")
    return {
        "tensors": len(per_tensor),
        "identical": sum(t["max_ulps"] == 0 for t in per_tensor.values()),
        "max_ulps": per_tensor[worst]["max_ulps"] if worst else 0,
        "max_ulps_at_scale": max((t["max_ulps_at_scale"] for t in per_tensor.values()), default=0.0),
        "worst_tensor": worst if worst and per_tensor[worst]["max_ulps"] else "",
        "name_differences": differences,
        "per_tensor": per_tensor,
    }


def passes(row: dict[str, Any]) -> bool:
    if row.get("error") or row["name_differences"] or not row["tensors"]:
        return False
    measure = row["max_ulps_at_scale"] if row.get("judged") == "scale" else row["max_ulps"]
    return measure <= FEW_ULPS


def toml_recipe(recipe: dict[str, Any]) -> str:
    import tomli_w

    return tomli_w.dumps(recipe)


def run_cattery_merge(recipe: dict[str, Any], folder: Path) -> tuple[float, str | None]:
    """`cattery merge` on the recipe: (seconds, None) or (seconds, its error line)."""
    path = folder.with_suffix(".toml")
    path.write_text(toml_recipe(recipe))
    start = time.monotonic()
    command = [sys.executable, "-m", "app", "merge", str(path), "-o", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    error = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]
    return time.monotonic() - start, error


def print_row(label: str, r: dict[str, Any]) -> None:
    if r.get("error"):
        print(f"{label:<62} failed: {r['error']}")
        return
    names = f"  names differ: {r['name_differences'][:3]}" if r["name_differences"] else ""
    print(
        f"{label:<62} {r['identical']:>3}/{r['tensors']:<3} {r['max_ulps']:>8} {r['max_ulps_at_scale']:>9.2f}  "
        f"{'yes' if passes(r) else 'NO':<4}{r['worst_tensor']}{names}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cattery-mergekit-reference")
    ap.add_argument("--reference-python", type=Path, help="a Python with mergekit 0.1.5 and PEFT (default: made)")
    ap.add_argument("--reference", type=Path, help=argparse.SUPPRESS)  # the reference side, in its own venv
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--only", metavar="TEXT", help="only the cases whose label contains TEXT")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR (a new folder) and keep the models there")
    args = ap.parse_args()
    if args.reference:
        return reference_main(args.reference)

    sys.path.insert(0, str(ROOT))
    from bench.common import append_result_row, machine, write_json

    python = args.reference_python or reference_python(args.cache)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": ""}
    rows: list[dict[str, Any]] = []
    spreads: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cattery-vs-mergekit-") as tmp:
        work = Path(tmp)
        if args.keep:
            args.keep.mkdir(parents=True)
            work = args.keep
        models = make_models(work / "models")
        todo = [c for c in cases(models, work) if not args.only or args.only in c["case"]]
        tasks = adapters(models, work)
        for i, case in enumerate(todo):
            extra = {"cache": str(work / "lora-cache")}
            case["reference"] |= {"out": str(work / f"ref{i}")} | extra
            tasks.append(case["reference"])
            if "spread" in case:
                case["spread"] |= {"out": str(work / f"ref{i}-1thread")} | extra
                tasks.append(case["spread"])
        job = work / "job.json"
        job.write_text(json.dumps(tasks))
        start = time.monotonic()
        subprocess.run([str(python), str(Path(__file__).resolve()), "--reference", str(job)], check=True, env=env)
        reference_s = time.monotonic() - start
        versions = json.loads(job.with_suffix(".versions.json").read_text())
        print(f"{'case':<62} {'identical':>7} {'max ulps':>8} {'at scale':>9}  {'ok':<4}worst tensor")
        for i, case in enumerate(todo):
            seconds, error = run_cattery_merge(case["recipe"], work / f"ours{i}")
            judged = case.get("judged", "bits")
            if error:
                row = {"case": case["case"], "judged": judged, "error": error, "tensors": 0, "max_ulps": -1}
                row |= {"max_ulps_at_scale": -1, "worst_tensor": "", "name_differences": []}
            else:
                row = {"case": case["case"], "judged": judged, "cattery_s": round(seconds, 2)}
                row |= compare(work / f"ours{i}", Path(case["reference"]["out"]))
            rows.append(row)
            print_row(case["case"], row)
            if "spread" in case:
                spread = {"case": f"mergekit itself, 1 thread vs default: {case['case']}", "judged": judged}
                spread |= compare(Path(case["spread"]["out"]), Path(case["reference"]["out"]))
                spreads.append(spread)
                print_row("  " + spread["case"], spread)
    good = sum(passes(r) for r in rows)
    print(
        f"{good} of {len(rows)} cases within {FEW_ULPS} float32 ulps of the reference (SLERP at the tensor's scale); "
        f"references {reference_s:.0f} s\n{SCALE_NOTE}"
    )
    data = {
        "machine": machine(),
        "reference": versions,
        "few_ulps": FEW_ULPS,
        "scale_note": SCALE_NOTE,
        "results": rows,
        "mergekit_spread": spreads,
    }
    print(f"wrote {write_json('mergekit_compare', data)}")
    if not args.no_record:
        m = data["machine"]
        worst = [r for r in rows if r.get("error") or r["max_ulps"]]
        append_result_row(
            "Merging against mergekit 0.1.5 and PEFT (`python bench/mergekit_compare.py`)",
            [
                "date",
                "machine",
                "references",
                f"cases within {FEW_ULPS} ulps",
                "bit-identical tensors",
                "not bit-identical",
            ],
            [
                time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                f"{m['cpu']}, {m['logical_cores']} cores",
                ", ".join(f"{k} {v}" for k, v in versions.items()),
                f"{good} of {len(rows)}",
                f"{sum(r['identical'] for r in rows if not r.get('error'))} of {sum(r['tensors'] for r in rows)}",
                "; ".join(
                    f"{r['case']}: "
                    + (r["error"] if r.get("error") else f"{r['max_ulps']} ulps, {r['max_ulps_at_scale']:.2f} at scale")
                    for r in worst
                )
                or "none",
            ],
        )
    return 0 if good == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
