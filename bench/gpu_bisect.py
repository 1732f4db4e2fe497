"""Issue 16's CUDA load crash, bisected: one way of loading a model per child process.

On the first GPU run, `cattery chat --plain` and bench/window.py died with a segmentation fault
inside `llama_model_load_from_file`, while a script loading the same model with the same
options through the same engine worked. The one systematic difference found on the CPU side
(the dynamic linker's load order, read in those very code paths) is that the crashing
processes imported gguf-py, numpy (with OpenBLAS) and yaml *before* llama-cpp-python opened
libllama and the CUDA libraries, and the working ones after. Cattery now loads llama.cpp first
(app/engine/libraries.py). This script runs each order on its own, on Cattery's engine and on
llama-cpp-python's bare API, plus the other suspects (two models at once, a reload, no mmap,
the OpenBLAS thread pool), then the real commands, so one GPU run says which one crashes.

Each child enables faulthandler and writes llama.cpp's log, debug lines included, straight to
its stderr (unbuffered: the last line before a crash is kept), and says which native libraries
were loaded before libllama. A crashed child is run again under gdb, when there is one, for the
native backtrace.

    python bench/gpu_bisect.py [--model M] [--only NAME,…] [--timeout S] [--rehearse] [--out F]

On a build without GPU offload it prints one skip line and exits 0; `--rehearse` runs every
variant there (all must pass, exit 1 otherwise). Writes bench/out/gpu_bisect.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import devices, gpu_offload, machine, now, write_json  # noqa: E402

# What every child runs first: faulthandler, the project on the path, and a report of the
# native libraries loaded so far (dl_iterate_phdr walks the linker's list in load order).
PREAMBLE = r"""
import ctypes, faulthandler, os, sys, time
from pathlib import Path
faulthandler.enable()
sys.path.insert(0, os.environ["BISECT_ROOT"])
M = Path(sys.argv[1])
GL = int(os.environ.get("BISECT_GPU_LAYERS", sys.argv[2]))

class _Info(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_void_p), ("name", ctypes.c_char_p)]

def loaded_libraries():
    names = []
    def collect(info, _size, _data):
        names.append((info.contents.name or b"").decode(errors="replace"))
        return 0
    cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_Info), ctypes.c_size_t, ctypes.c_void_p)(collect)
    ctypes.CDLL(None).dl_iterate_phdr(cb, None)
    return names

def say(text):
    os.write(2, ("@@ " + text + "\n").encode())

def before_llama():
    libs = loaded_libraries()
    first = next((i for i, n in enumerate(libs) if "/llama_cpp/lib/" in n), len(libs))
    early = [Path(n).name for n in libs[:first] if "-packages/" in n or "/site/" in n]
    say("native libraries before libllama: " + (", ".join(early) or "none"))

FAMILIES = ("libstdc++", "libgcc_s", "libgomp", "libcudart", "libcublas", "libcublasLt", "libcuda", "libnvrtc",
            "libnvJitLink", "libggml", "libggml-base", "libggml-cpu", "libggml-cuda", "libllama")

def say_libraries():
    # Where each library that C++, OpenMP, CUDA or BLAS code shares by name came from, and any
    # loaded from two files (two copies, each with its own state). A wheel's bundled copy is
    # renamed with a hash ("libgomp-6a29c32d.so.1.0.0"): the same family.
    import re
    found = {}
    for path in loaded_libraries():
        stem = re.sub(r"-[0-9a-f]{8}$", "", Path(path).name.split(".so")[0])
        if stem in FAMILIES or stem.startswith(("libscipy_openblas", "libopenblas")):
            found.setdefault(stem, []).append(path)
    say("libraries: " + "; ".join(f"{k} {' + '.join(v)}" for k, v in found.items()))
    twice = [k for k, v in found.items() if len(v) > 1]
    say("loaded from two files: " + (", ".join(twice) or "none"))

def tee_llama_log():
    # Cattery's log hook, with every line (debug included) also written to stderr at once.
    from app.engine.llama_log import LOG
    keep = LOG._on_log
    def tee(level, text, user_data):
        os.write(2, b"llama| " + (text or b""))
        return keep(level, text, user_data)
    LOG._on_log = tee

def bare_log():
    import llama_cpp as L
    @L.llama_log_callback
    def cb(level, text, user_data):
        os.write(2, b"llama| " + (text or b""))
    globals()["_bare_log_cb"] = cb
    L.llama_log_set(cb, ctypes.c_void_p(0))
"""

ENGINE_LOAD = r"""
tee_llama_log()
from app.engine.engine import Engine
from app.engine.options import LoadOptions, SamplerSettings
before_llama()
import llama_cpp  # what Engine.load would import next: here first, to list what it brought
say_libraries()
engine = Engine()
t = time.perf_counter()
report = engine.load(M, LoadOptions(ctx=2048, gpu_layers=None if GL < 0 else GL))
say(f"loaded in {time.perf_counter() - t:.2f} s: {report.placement}")
reply = engine.generate("Hello", SamplerSettings(temperature=0.0, max_tokens=4)).result()
say(f"generated {reply!r}")
engine.close()
say("ok")
"""

BARE_LOAD = r"""
import llama_cpp as L
bare_log()
before_llama()
say_libraries()
L.llama_backend_init()
p = L.llama_model_default_params()
p.n_gpu_layers = GL
t = time.perf_counter()
model = L.llama_model_load_from_file(str(M).encode(), p)
say(f"bare load {'ok' if model else 'FAILED'} in {time.perf_counter() - t:.2f} s")
if model:
    L.llama_model_free(model)
    say("ok")
"""

# llama.cpp first, then the engine: for the variants about something other than the order
ENGINE_SETUP = r"""
tee_llama_log()
import llama_cpp
from app.engine.engine import Engine
from app.engine.options import LoadOptions
before_llama()
layers = None if GL < 0 else GL
"""

TWO_ENGINES = (
    ENGINE_SETUP
    + r"""
a, b = Engine(), Engine()
say("first: " + a.load(M, LoadOptions(ctx=1024, gpu_layers=layers)).placement)
say("second, while the first is loaded: " + b.load(M, LoadOptions(ctx=512, gpu_layers=layers)).placement)
say("the first again, replacing itself: " + a.load(M, LoadOptions(ctx=512, warmup=False)).placement)
a.close(); b.close()
say("ok")
"""
)

NO_MMAP = (
    ENGINE_SETUP
    + r"""
e = Engine()
say("no mmap: " + e.load(M, LoadOptions(ctx=1024, mmap=False, gpu_layers=layers)).placement)
e.close()
say("ok")
"""
)

# name: (what it tells, the imports that come first, the load, extra environment)
VARIANTS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "engine/llama-first": ("the order that worked", "import llama_cpp", ENGINE_LOAD, {}),
    "engine/numpy-first": ("numpy and its OpenBLAS before libllama", "import numpy", ENGINE_LOAD, {}),
    "engine/gguf-first": (
        "what the crashing processes did: gguf-py (numpy, yaml) before libllama",
        "import gguf",
        ENGINE_LOAD,
        {},
    ),
    "engine/gguf-first/openblas-1-thread": (
        "the same without OpenBLAS's thread pool",
        "import gguf",
        ENGINE_LOAD,
        {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    ),
    "engine/gguf-first/gpu-layers-0": (
        "the crash came with --gpu-layers 0 too",
        "import gguf",
        ENGINE_LOAD,
        {"BISECT_GPU_LAYERS": "0"},
    ),
    "engine/yaml-first": ("yaml alone before libllama", "import yaml", ENGINE_LOAD, {}),
    "engine/psutil-first": ("psutil alone before libllama", "import psutil", ENGINE_LOAD, {}),
    "bare/llama-first": ("llama-cpp-python alone, no Cattery code", "import llama_cpp", BARE_LOAD, {}),
    "bare/numpy-first": (
        "llama-cpp-python alone after numpy: a crash here is not Cattery's",
        "import numpy",
        BARE_LOAD,
        {},
    ),
    "bare/gguf-first": ("llama-cpp-python alone after gguf-py", "import gguf", BARE_LOAD, {}),
    "engine/two-models": ("two models at once, then a reload (the engine tests do this)", "", TWO_ENGINES, {}),
    "engine/no-mmap": ("a load without mmap (an engine test option)", "", NO_MMAP, {}),
}


def child_command(code: str, model: Path, gpu_layers: int) -> list[str]:
    return [sys.executable, "-X", "faulthandler", "-c", code, str(model), str(gpu_layers)]


def outcome(returncode: int | None) -> str:
    if returncode is None:
        return "timeout"
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return "ok" if returncode == 0 else f"exit {returncode}"


def run_child(cmd: list[str], env: dict[str, str], timeout: float, stdin: str = "") -> dict[str, Any]:
    start = time.perf_counter()
    try:
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        code: int | None = r.returncode
        out, err = r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        code = None
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    lines = [line for line in (out + err).splitlines() if line.strip()]
    return {
        "outcome": outcome(code),
        "seconds": round(time.perf_counter() - start, 2),
        "notes": [line[3:] for line in lines if line.startswith("@@ ")],
        "tail": lines[-40:],
    }


def gdb_backtrace(cmd: list[str], env: dict[str, str], timeout: float) -> list[str]:
    """The native stack of a crash, from gdb when the machine has it; [] otherwise."""
    gdb = shutil.which("gdb")
    if not gdb:
        return []
    full = [gdb, "-q", "-batch", "-ex", "run", "-ex", "bt 40", "-ex", "info threads", "--args", *cmd]
    try:
        r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return ["gdb: timed out"]
    text = r.stdout + r.stderr
    keep = [line for line in text.splitlines() if line.startswith(("#", "Thread", "  Id", "*", "Program received"))]
    return keep[:80]


def real_commands(model: Path, gpu_layers: int) -> dict[str, tuple[str, list[str], str]]:
    layers = "auto" if gpu_layers < 0 else str(gpu_layers)
    py = sys.executable
    chat_args = ["chat", "--plain", "--model", str(model), "--card", "none", "--gpu-layers", layers]
    chat_args += ["--max-tokens", "8", "--new"]
    return {
        "cattery chat --plain": (
            "the line chat as a user runs it (crashed on the first GPU run)",
            [py, "-X", "faulthandler", "-m", "app", *chat_args],
            "Hello!\n/quit\n",
        ),
        "cattery chat --plain/gguf-first": (
            "the same command with gguf-py imported before it starts: the order it had when it crashed",
            [
                py,
                "-X",
                "faulthandler",
                "-c",
                "import gguf, runpy, sys; sys.argv = ['cattery', *sys.argv[1:]]; "
                "runpy.run_module('app', run_name='__main__')",
                *chat_args,
            ],
            "Hello!\n/quit\n",
        ),
        "bench/window.py": (
            "the context-shift bench (crashed on the first GPU run)",
            [
                py,
                "-X",
                "faulthandler",
                "bench/window.py",
                "--model",
                str(model),
                "--turns",
                "3",
                "--ctx",
                "2048",
                "--no-record",
            ],
            "",
        ),
    }


def verdict(results: dict[str, dict[str, Any]]) -> str:
    crashed = [name for name, r in results.items() if r["outcome"] != "ok"]
    if not crashed:
        return "no variant crashed"
    first = [n for n in results if n.endswith("/llama-first")]
    later = [n for n in results if "-first" in n and n not in first]
    later_crashed = [n for n in later if results[n]["outcome"] != "ok"]
    if first and all(results[n]["outcome"] == "ok" for n in first) and later_crashed:
        alone = any(n.startswith("bare/") for n in later_crashed)
        return f"the import order matters: {', '.join(later_crashed)} crashed, llama.cpp first worked" + (
            "; llama-cpp-python alone crashes too (not Cattery's code)" if alone else ""
        )
    return "crashed: " + ", ".join(crashed) + " (not explained by the import order alone)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .gguf path (default: the bundled model)")
    parser.add_argument("--gpu-layers", type=int, default=-1, help="-1 (default): every layer, or N")
    parser.add_argument("--only", help="comma-separated variant names, e.g. engine/gguf-first (default: all)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds per child (default 180)")
    parser.add_argument("--no-commands", action="store_true", help="skip the real commands")
    parser.add_argument("--rehearse", action="store_true", help="run every variant even without GPU offload")
    parser.add_argument("--out", type=Path, help="the JSON file (default bench/out/gpu_bisect.json)")
    args = parser.parse_args()

    from app.hub.library import resolve_model

    offload = gpu_offload("bench/gpu_bisect.py", args.rehearse)
    if offload is None:
        return 0
    model = resolve_model(args.model, [])
    wanted = {n.strip() for n in args.only.split(",")} if args.only else None
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cattery-bisect-") as home:
        env = {**os.environ, "BISECT_ROOT": str(ROOT), "CATTERY_HOME": home, "PYTHONUNBUFFERED": "1"}
        runs: list[tuple[str, str, list[str], dict[str, str], str]] = []
        for name, (about, first, load, extra) in VARIANTS.items():
            code = PREAMBLE + "\n" + first + "\n" + load
            runs.append((name, about, child_command(code, model, args.gpu_layers), {**env, **extra}, ""))
        if not args.no_commands:
            for name, (about, cmd, stdin) in real_commands(model, args.gpu_layers).items():
                runs.append((name, about, cmd, env, stdin))
        for name, about, cmd, run_env, stdin in runs:
            if wanted is not None and name not in wanted:
                continue
            result = {"about": about, **run_child(cmd, run_env, args.timeout, stdin)}
            if result["outcome"] not in ("ok", "timeout") and not result["outcome"].startswith("exit"):
                result["gdb"] = gdb_backtrace(cmd, run_env, min(args.timeout, 90))
            results[name] = result
            notes = "; ".join(n for n in result["notes"] if not n.startswith("generated"))
            print(f"{name:<36} {result['outcome']:<8} {result['seconds']:6.1f} s  {notes}", flush=True)
            if result["outcome"] != "ok":
                for line in result["tail"][-12:]:
                    print(f"    {line}", flush=True)
    summary = verdict(results)
    out = write_json(
        "gpu_bisect",
        {
            "benchmark": "gpu_bisect",
            "when": now(),
            "machine": machine(),
            "model": model.name,
            "offload_supported": offload,
            "devices": devices(),
            "gpu_layers": args.gpu_layers,
            "variants": results,
            "verdict": summary,
        },
        args.out,
    )
    print(f"verdict: {summary}; wrote {out}")
    if args.rehearse and not offload:  # on the CPU every variant must work: the script itself is checked
        return 0 if all(r["outcome"] == "ok" for r in results.values()) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
