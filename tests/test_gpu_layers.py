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
