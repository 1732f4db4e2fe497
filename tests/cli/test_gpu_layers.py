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

import pytest

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


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- --gpu-layers auto: the most layers that fit the free VRAM ---------------------------------
#
# This machine has no GPU, so these tests replace ONE thing: the device query
# (`app.engine.native.gpu_devices`, which asks ggml for each GPU's free memory) answers with
# the free VRAM each test gives. The model's numbers are the bundled model's real header, and
# the arithmetic is the real one the Hub's verdict uses.

GIB = 1024**3


def _fake_gpu(monkeypatch, free: int | None) -> list[int]:
    """Make the device query report one GPU with `free` bytes free; returns a call counter."""
    from app.engine import native

    calls: list[int] = []

    def gpu_devices() -> list[tuple[str, int, int]]:
        calls.append(1)
        if free is None:
            raise AssertionError("the device was asked on a build without offload")
        return [("Fake GPU", free, max(free, 80 * GIB))]

    monkeypatch.setattr(native, "gpu_devices", gpu_devices)
    return calls


def _auto(info, n_ctx: int = 4096, **options):
    from app.engine.options import LoadOptions
    from app.engine.placement import choose_gpu_layers

    return choose_gpu_layers(info, n_ctx, LoadOptions(ctx=n_ctx, **options), offload=True)


def _vram(info, n_ctx: int, layers: int) -> int:
    from app.engine.options import LoadOptions
    from app.engine.preflight import estimate_memory

    return estimate_memory(info, n_ctx, LoadOptions(ctx=n_ctx), layers).vram


def test_auto_with_no_free_vram_stays_on_the_cpu(model_path: Path, monkeypatch) -> None:
    from app.engine.metadata import read_model_info
    from app.engine.preflight import VRAM_RESERVE

    info = read_model_info(model_path)
    for free in (0, VRAM_RESERVE, VRAM_RESERVE + _vram(info, 4096, 1) - 1):  # nothing, the reserve, not one layer
        _fake_gpu(monkeypatch, free)
        choice = _auto(info)
        assert choice.gpu_layers == 0 and choice.auto and choice.vram_free == free


def test_auto_offloads_every_layer_when_a_gpu_build_lists_no_device(model_path: Path, monkeypatch) -> None:
    """A build that offloads but whose devices cannot be read: llama.cpp decides (every layer), said
    once, never the CPU by mistake because "no device" looked like "no free memory"."""
    from app.engine import native
    from app.engine.metadata import read_model_info
    from app.engine.placement import UNKNOWN_VRAM_WARNING

    monkeypatch.setattr(native, "gpu_devices", lambda: [])
    choice = _auto(read_model_info(model_path))
    assert choice.gpu_layers == -1 and choice.auto and choice.vram_free is None
    assert choice.warnings == [UNKNOWN_VRAM_WARNING]


def test_auto_puts_every_layer_on_a_gpu_that_holds_them(model_path: Path, monkeypatch) -> None:
    from app.engine.metadata import read_model_info

    info = read_model_info(model_path)
    _fake_gpu(monkeypatch, 80 * GIB)
    choice = _auto(info)
    assert choice.gpu_layers == -1  # llama.cpp's "all"
    assert choice.layers_on_gpu(info.block_count) == info.block_count + 1
    assert choice.vram_free == 80 * GIB


def test_auto_puts_the_most_layers_that_fit_and_no_more(model_path: Path, monkeypatch) -> None:
    """Midway between one layer's need and every layer's: a split, the largest count that fits."""
    from app.engine.metadata import read_model_info
    from app.engine.preflight import VRAM_RESERVE
    from app.hub.fit import fit

    info = read_model_info(model_path)
    layers = info.block_count + 1
    free = VRAM_RESERVE + (_vram(info, 4096, 1) + _vram(info, 4096, layers)) // 2
    _fake_gpu(monkeypatch, free)
    n = _auto(info).gpu_layers
    assert 0 < n < layers
    assert _vram(info, 4096, n) <= free - VRAM_RESERVE < _vram(info, 4096, n + 1)
    # The Hub's verdict for the same GPU says the same count.
    assert fit(info, 4096, ram_free=1 << 50, vram_free=free).gpu_layers == n
    # A longer context (a bigger KV cache and compute buffer) leaves room for fewer layers.
    assert _auto(info, 16384).gpu_layers < n


def test_auto_splits_a_model_bigger_than_the_gpu(model_path: Path, monkeypatch) -> None:
    """A 70B-shaped Q4 (80 layers, 40 GiB of weights) on a 24 GiB card: offload what fits, not -1."""
    import dataclasses

    from app.engine.metadata import read_model_info
    from app.engine.preflight import VRAM_RESERVE

    big = dataclasses.replace(
        read_model_info(model_path),
        tensor_bytes=40 * GIB,
        block_count=80,
        embedding_length=8192,
        head_count=64,
        head_count_kv=8,
        key_length=128,
        value_length=128,
        vocab_size=32000,
    )
    _fake_gpu(monkeypatch, 24 * GIB)
    n = _auto(big).gpu_layers
    assert 30 < n < 50  # about 23.5 / 40 of 81 layers, less the cache and buffers
    assert _vram(big, 4096, n) <= 24 * GIB - VRAM_RESERVE < _vram(big, 4096, n + 1)


def test_auto_on_a_build_without_offload_is_the_cpu_without_asking(model_path: Path, monkeypatch) -> None:
    from app.engine.metadata import read_model_info
    from app.engine.options import LoadOptions
    from app.engine.placement import choose_gpu_layers

    info = read_model_info(model_path)
    calls = _fake_gpu(monkeypatch, None)
    choice = choose_gpu_layers(info, 4096, LoadOptions(), offload=False)
    assert choice.gpu_layers == 0 and choice.vram_free is None and not choice.warnings and not calls


def test_an_explicit_count_is_not_second_guessed(model_path: Path, monkeypatch) -> None:
    from app.engine.metadata import read_model_info
    from app.engine.options import LoadOptions
    from app.engine.placement import choose_gpu_layers

    info = read_model_info(model_path)
    calls = _fake_gpu(monkeypatch, 0)
    assert choose_gpu_layers(info, 4096, LoadOptions(gpu_layers=10), offload=True).gpu_layers == 10
    assert choose_gpu_layers(info, 4096, LoadOptions(gpu_layers=10**6), offload=True).gpu_layers == 31
    assert not calls


def test_the_report_says_what_auto_chose() -> None:
    from app.engine.stats import LoadReport

    def report(gpu_layers: int, offload: bool, vram_free: int | None) -> str:
        return LoadReport(
            path=Path("m.gguf"),
            n_ctx=4096,
            n_ctx_train=8192,
            n_layers=22,
            gpu_layers=gpu_layers,
            offload_supported=offload,
            threads=4,
            threads_batch=4,
            batch=512,
            flash_attn="auto",
            cache_type_k="f16",
            cache_type_v="f16",
            rope_freq_base=None,
            rope_scale=None,
            load_seconds=1.0,
            vram_free=vram_free,
        ).placement

    assert report(18, True, int(9.1 * GIB)) == "GPU 18/23 layers (auto: 9.1 GiB free)"
    assert report(23, True, None) == "GPU 23/23 layers"  # a count the user gave
    assert report(0, True, int(0.3 * GIB)) == "CPU (auto: 0.3 GiB free, not one layer fits)"
    assert report(0, True, None) == "CPU"
    assert report(0, False, None) == "CPU (this llama.cpp build has no GPU offload)"


def test_chat_on_this_build_reports_its_placement(model_path: Path, cattery_home: Path) -> None:
    """The real line chat with auto on this build: the banner names the placement it chose."""
    import llama_cpp

    from tests.conftest import run_cattery

    r = run_cattery(
        "chat", "--plain", "--model", str(model_path), "--gpu-layers", "auto", input="/quit\n", home=cattery_home
    )
    assert r.returncode == 0, r.stderr
    if not llama_cpp.llama_supports_gpu_offload():
        assert "CPU (this llama.cpp build has no GPU offload)" in r.stdout + r.stderr
    else:
        assert "(auto: " in r.stdout + r.stderr


# -- bench/gpu.py ------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_gpu_skips_in_one_line_without_offload_and_rehearses_every_step(tmp_path: Path) -> None:
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():  # the real run is bench/gpu.py itself on that machine
        return
    r = subprocess.run([sys.executable, "bench/gpu.py"], capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.splitlines() == [
        "bench/gpu.py: skipped (no GPU offload in this llama.cpp build)"
    ]
    out = tmp_path / "gpu.json"
    # one placement of each kind the script resolves (auto, a count): on a CPU build all four are the CPU
    cmd = ["bench/gpu.py", "--rehearse", "--tokens", "4", "--rounds", "1", "--turns", "10", "--ctx", "512"]
    cmd += ["--layers", "auto,15"]
    r = subprocess.run(
        [sys.executable, *cmd, "--out", str(out)], capture_output=True, text=True, timeout=4 * DEADLINE, cwd=ROOT
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [s["gpu_layers"] for s in result["steps"]] == ["auto", "15"]
    for step in result["steps"]:
        assert step["ok"] and step["chat"]["returncode"] == 0 and "CPU" in step["chat"]["banner"]
        assert step["shift"]["shifted_tokens"] > 0 and step["decode"]["settings"]["bare_gpu_layers"] == 0


# -- bench/gpu_bisect.py -----------------------------------------------------------------------


def test_bench_gpu_bisect_skips_without_offload_and_rehearses_its_variants(tmp_path: Path) -> None:
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():  # on that machine the script itself is the check
        return
    r = subprocess.run(
        [sys.executable, "bench/gpu_bisect.py"], capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT
    )
    assert r.returncode == 0 and r.stdout.splitlines() == [
        "bench/gpu_bisect.py: skipped (no GPU offload in this llama.cpp build)"
    ]
    out = tmp_path / "bisect.json"
    only = "engine/llama-first,engine/gguf-first,bare/numpy-first,engine/two-models"
    r = subprocess.run(
        [sys.executable, "bench/gpu_bisect.py", "--rehearse", "--no-commands", "--only", only, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=4 * DEADLINE,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads(out.read_text())
    variants = result["variants"]
    assert list(variants) == only.split(",")
    assert all(v["outcome"] == "ok" for v in variants.values()), variants
    assert result["verdict"] == "no variant crashed"
    notes = {name: " ".join(v["notes"]) for name, v in variants.items()}
    # each child reports what was loaded before libllama: the order the variant is about
    assert "before libllama: none" in notes["engine/llama-first"]
    assert "loaded from two files: none" in notes["engine/llama-first"] and "libllama /" in notes["engine/llama-first"]
    assert "_multiarray_umath" in notes["engine/gguf-first"] and "_yaml" in notes["engine/gguf-first"]
    assert "_multiarray_umath" in notes["bare/numpy-first"] and "bare load ok" in notes["bare/numpy-first"]
    assert "second, while the first is loaded" in notes["engine/two-models"]


def test_bench_gpu_bisect_names_what_crashed() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.gpu_bisect import outcome, verdict

    assert [outcome(c) for c in (0, 1, -11, -6, None)] == ["ok", "exit 1", "SIGSEGV", "SIGABRT", "timeout"]
    ok, segv = {"outcome": "ok"}, {"outcome": "SIGSEGV"}
    assert verdict({"engine/llama-first": ok, "engine/gguf-first": ok}) == "no variant crashed"
    order = verdict(
        {"engine/llama-first": ok, "bare/llama-first": ok, "engine/gguf-first": segv, "bare/numpy-first": ok}
    )
    assert order == "the import order matters: engine/gguf-first crashed, llama.cpp first worked"
    alone = verdict({"engine/llama-first": ok, "bare/numpy-first": segv})
    assert alone.endswith("llama-cpp-python alone crashes too (not Cattery's code)")
    both = verdict({"engine/llama-first": segv, "engine/gguf-first": segv})
    assert both == "crashed: engine/llama-first, engine/gguf-first (not explained by the import order alone)"
