"""GPU layer placement (issue 16): one `--gpu-layers` for every command that loads a model.

The bench's bare llama-cpp-python loop used to hard-code zero layers on the GPU while
Cattery's engine offloaded everything on a CUDA build, so the "ratio" compared GPU with CPU.
`cattery eval` had no `--gpu-layers` at all. And `auto` meant "every layer" whatever the
VRAM held. These tests run the real bench, the real CLI and the real fit arithmetic; only
the device query (free VRAM) is replaced where a test says so, since this machine has no GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import DEADLINE, ROOT

# -- bench/decode.py ------------------------------------------------------------------------


def _bench_decode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bench/decode.py", "--tokens", "6", "--rounds", "2", "--ctx", "512", "--no-record", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
    )


def test_bench_decode_puts_both_sides_on_the_layers_asked(tmp_path: Path) -> None:
    """`--gpu-layers all` reaches both sides: the bare loop gets what the engine offloaded."""
    out = tmp_path / "decode.json"
    r = _bench_decode("--gpu-layers", "all", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    settings = result["settings"]
    assert settings["gpu_layers_asked"] == "all"
    assert settings["bare_gpu_layers"] == settings["gpu_layers"]  # the same placement on both sides
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        assert settings["gpu_layers"] == settings["n_layers"]
    else:  # this build: no offload, so "all" is the CPU for both, and said so
        assert settings["gpu_layers"] == 0 and result["placement"].startswith("CPU")
    assert f"bare loop: n_gpu_layers {settings['bare_gpu_layers']}" in r.stdout
    assert result["same_text"] is True
    assert len(result["cattery_tokens_per_second"]) == len(result["bare_tokens_per_second"]) == 2


def test_bench_decode_refuses_a_bad_layer_count_in_one_line() -> None:
    r = _bench_decode("--gpu-layers", "lots")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: --gpu-layers: expected auto, all or a number, got 'lots'"]


# -- cattery eval --gpu-layers ----------------------------------------------------------------

EVAL_TEXT = ROOT / "README.md"  # plain English prose, far more than two chunks of 64 tokens


def _eval(model_path: Path, home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    from tests.conftest import run_cattery

    return run_cattery(
        "eval", str(model_path), str(EVAL_TEXT), "--ctx", "64", "--chunks", "2", "--json", *extra, home=home
    )


def test_eval_takes_gpu_layers_as_chat_does(model_path: Path, cattery_home: Path) -> None:
    import llama_cpp

    offload = bool(llama_cpp.llama_supports_gpu_offload())
    cpu = _eval(model_path, cattery_home, "--gpu-layers", "0")
    assert cpu.returncode == 0, cpu.stderr
    on_cpu = json.loads(cpu.stdout)
    assert on_cpu["gpu_layers"] == 0 and on_cpu["placement"] == "CPU"
    auto = _eval(model_path, cattery_home, "--gpu-layers", "auto")
    assert auto.returncode == 0, auto.stderr
    automatic = json.loads(auto.stdout)
    if offload:
        assert automatic["gpu_layers"] > 0 and automatic["placement"].startswith("GPU ")
    else:  # this build: auto is the CPU, silently (nothing was asked that cannot be done)
        assert automatic["gpu_layers"] == 0 and automatic["placement"] == "CPU"
        assert "no GPU offload" not in auto.stderr
        assert automatic["ppl"] == on_cpu["ppl"]  # the same computation, bit for bit
    # A count asked on a build without offload runs on the CPU and says why, as chat does.
    some = _eval(model_path, cattery_home, "--gpu-layers", "5")
    assert some.returncode == 0, some.stderr
    if not offload:
        assert "this llama.cpp build has no GPU offload" in some.stderr
        assert json.loads(some.stdout)["gpu_layers"] == 0


def test_eval_refuses_a_bad_layer_count_in_one_line(model_path: Path, cattery_home: Path) -> None:
    r = _eval(model_path, cattery_home, "--gpu-layers", "half")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if line.strip()] == [
        "cattery: error: --gpu-layers: expected auto, all or a number, got 'half'"
    ]
