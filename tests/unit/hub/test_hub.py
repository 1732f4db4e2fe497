"""Models from the hub: search, files with fit verdicts, downloads that resume and are verified.

Nothing here reaches the internet: a small hub on 127.0.0.1 (tests/hub_server.py) serves
repos made from real files, and the real `cattery` (with the real huggingface_hub client,
through HF_ENDPOINT) runs in child processes against it, each test with its own HF cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DEADLINE, ROOT, run_cattery
from tests.hub_server import ADAPTER, CHECKPOINT, FILE, GATED, PICKLED, QUANTS, SMOL, SPLIT, HubServer


@pytest.fixture
def hf(hub: HubServer, tmp_path: Path, cattery_home: Path) -> dict[str, str]:
    """The environment of a user whose hub is the test server and whose HF cache is empty."""
    hub.faults.clear()
    hub.requests.clear()
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": "",
        "HF_HUB_OFFLINE": "0",
    }


def cattery(*args: str, env: dict[str, str], home: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return run_cattery(*args, env=env, home=home, **kw)  # type: ignore[arg-type]


def error_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("cattery: error:")]


def blobs(env: dict[str, str], repo: str) -> list[Path]:
    folder = Path(env["HF_HOME"]) / "hub" / f"models--{repo.replace('/', '--')}" / "blobs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_search_lists_gguf_repos_most_downloaded_first_with_sizes(hub, hf, cattery_home) -> None:
    r = cattery("models", "search", "smollm2", "--json", env=hf, home=cattery_home)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert [h["repo"] for h in hits] == [SMOL, SPLIT]  # the checkpoint has no GGUF: not listed
    smol = hits[0]
    assert smol["downloads"] == 5000 and smol["last_modified"].startswith("2026-10-01")
    assert smol["smallest"] == smol["largest"] == hub.repos[SMOL].files[FILE].size
    assert hits[1]["models"] == 1 and hits[1]["smallest"] == sum(f.size for f in hub.repos[SPLIT].files.values())
    text = cattery("models", "search", "smollm2", env=hf, home=cattery_home).stdout
    assert "5,000 downloads" in text and "updated 2026-10-01" in text


def test_files_fit_verdicts_come_from_the_remote_header(hub, hf, cattery_home, model_path) -> None:
    from app.engine.metadata import read_model_info
    from app.engine.options import LoadOptions
    from app.hub.fit import fit

    r = cattery("models", "files", SMOL, "--ctx", "2048", "--json", env=hf, home=cattery_home)
    assert r.returncode == 0, r.stderr
    [model] = json.loads(r.stdout)["models"]
    local = read_model_info(model_path)
    assert model["name"] == f"{SMOL}:Q4_1" and model["quant"] == "Q4_1" == local.file_type
    assert model["trained_ctx"] == local.context_length and model["layers"] == local.block_count
    same = fit(local, 2048, LoadOptions(), ram_free=1 << 50)
    assert model["ram_needed"] == same.ram_needed  # the same numbers as the downloaded file gives
    assert model["fit"] == "ram" and "fits in RAM" in model["verdict"]
    # Only the header was read: a few MB by ranges, not the 98 MB file.
    ranged = [h for m, p, h in hub.requests if m == "GET" and p.endswith(FILE)]
    assert ranged and all("bytes=" in h.get("Range", h.get("range", "")) for h in ranged)
    # A split model is one model; its weights are all of its parts.
    r = cattery("models", "files", SPLIT, "--ctx", "2048", "--json", env=hf, home=cattery_home)
    [split] = json.loads(r.stdout)["models"]
    assert len(split["files"]) == 3 and split["size"] == sum(f.size for f in hub.repos[SPLIT].files.values())
    assert split["ram_needed"] >= same.ram_needed - 4 * 2**20
    # A model too large for this machine says so.
    r = cattery("models", "files", QUANTS, "--json", env=hf, home=cattery_home)
    rows = json.loads(r.stdout)["models"]
    assert [m["name"] for m in rows] == [f"{QUANTS}:Q4_K_M", f"{QUANTS}:Q8_0"]


def test_download_into_the_hf_cache_found_by_every_command(hub, hf, cattery_home, model_path) -> None:
    r = cattery("models", "download", SMOL, env=hf, home=cattery_home)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path.name == FILE and path.is_symlink() and "snapshots" in str(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hub.repos[SMOL].files[FILE].sha256
    assert "SHA-256 checked" in r.stderr
    # huggingface_hub itself finds it, offline (other tools reuse what Cattery downloaded).
    code = f"from huggingface_hub import hf_hub_download; print(hf_hub_download({SMOL!r}, {FILE!r}))"
    env = {**os.environ, **hf, "HF_HUB_OFFLINE": "1"}
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert Path(found.stdout.strip()) == path
    listing = json.loads(cattery("models", "list", "--json", env=hf, home=cattery_home).stdout)
    names = {e["name"]: e["source"] for e in listing}
    assert names[f"{SMOL}:Q4_1"] == f"hf:{SMOL}"
    info = json.loads(cattery("models", "info", f"{SMOL}:Q4_1", "--json", env=hf, home=cattery_home).stdout)
    assert info["file_type"] == "Q4_1" and info["where"] == str(path)
    chat = cattery("chat", "--plain", "--model", f"{SMOL}:q4_1", input="/quit\n", env=hf, home=cattery_home)
    assert chat.returncode == 0 and FILE in chat.stderr
    # A second download asks the hub nothing big: it is already there.
    before = hub.count("GET", "/resolve/")
    again = cattery("models", "download", f"{SMOL}:Q4_1", env=hf, home=cattery_home)
    assert again.returncode == 0 and hub.count("GET", "/resolve/") == before
    # And it goes away again.
    gone = cattery("models", "rm", f"{SMOL}:Q4_1", env=hf, home=cattery_home)
    assert gone.returncode == 0 and "freed" in gone.stdout
    assert not blobs(hf, SMOL)
    missing = cattery("models", "info", f"{SMOL}:Q4_1", env=hf, home=cattery_home)
    assert missing.returncode == 0 and "on the hub (not downloaded)" in missing.stdout


def test_a_split_model_downloads_all_its_parts_and_loads(hub, hf, cattery_home) -> None:
    r = cattery("models", "download", SPLIT, env=hf, home=cattery_home)
    assert r.returncode == 0, r.stderr
    paths = [Path(line) for line in r.stdout.split()]
    assert [p.name for p in paths] == sorted(hub.repos[SPLIT].files)
    chat = cattery("chat", "--plain", "--model", f"{SPLIT}:Q4_1", input="/quit\n", env=hf, home=cattery_home)
    assert chat.returncode == 0, chat.stderr
    listing = json.loads(cattery("models", "list", "--json", env=hf, home=cattery_home).stdout)
    [entry] = [e for e in listing if e["source"] == f"hf:{SPLIT}"]
    assert entry["size"] == sum(f.size for f in hub.repos[SPLIT].files.values())


def test_a_dropped_connection_resumes_where_it_stopped(hub, hf, cattery_home) -> None:
    hub.fault(SMOL, FILE, drop_after=30_000_000)
    r = cattery("models", "download", SMOL, env=hf, home=cattery_home)
    assert r.returncode == 0, r.stderr
    gets = [h for m, p, h in hub.requests if m == "GET" and p.endswith(FILE)]
    ranges = [h.get("Range") or h.get("range") for h in gets]
    assert len(ranges) == 2 and ranges[0] is None
    # The second asked only for the rest (from the last whole 10 MiB block written).
    start = int(ranges[1].split("=")[1].rstrip("-"))
    assert 10_000_000 < start <= 30_000_000
    path = Path(r.stdout.strip())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hub.repos[SMOL].files[FILE].sha256


def test_a_killed_download_continues_next_time(hub, hf, cattery_home) -> None:
    hub.fault(SMOL, FILE, rate=20_000_000)
    env = {**os.environ, **hf, "CATTERY_HOME": str(cattery_home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "models", "download", SMOL],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    partial = None
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = [p for p in blobs(hf, SMOL) if p.name.endswith(".cattery-partial")]
        if found and found[0].stat().st_size > 8_000_000:
            partial = found[0]
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial is not None and partial.exists()
    kept = partial.stat().st_size
    r = cattery("models", "download", SMOL, env=hf, home=cattery_home)
    assert r.returncode == 0, r.stderr
    last = [h for m, p, h in hub.requests if m == "GET" and p.endswith(FILE)][-1]
    start = int((last.get("Range") or last.get("range")).split("=")[1].rstrip("-"))
    assert start >= kept - 1_000_000 and start > 0  # continued, not started over
    path = Path(r.stdout.strip())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hub.repos[SMOL].files[FILE].sha256
    assert not partial.exists()


def test_a_corrupted_download_is_rejected_and_deleted(hub, hf, cattery_home) -> None:
    hub.fault(SMOL, FILE, corrupt=True)
    r = cattery("models", "download", SMOL, env=hf, home=cattery_home)
    [line] = error_lines(r)
    assert r.returncode != 0 and "SHA-256" in line and "deleted" in line
    assert not blobs(hf, SMOL)  # neither a blob nor a partial stays behind
    listing = json.loads(cattery("models", "list", "--json", env=hf, home=cattery_home).stdout)
    assert not [e for e in listing if e["source"] == f"hf:{SMOL}"]


def test_gated_repos_need_a_token(hub, hf, cattery_home) -> None:
    r = cattery("models", "download", GATED, env=hf, home=cattery_home)
    [line] = error_lines(r)
    assert r.returncode != 0 and "gated" in line and "HF_TOKEN" in line
    wrong = cattery("models", "download", GATED, env={**hf, "HF_TOKEN": "hf_wrong"}, home=cattery_home)
    assert wrong.returncode != 0 and "no access" in wrong.stderr
    right = cattery("models", "download", GATED, env={**hf, "HF_TOKEN": hub.token}, home=cattery_home)
    assert right.returncode == 0, right.stderr


def test_not_enough_disk_space_refuses_before_starting(hub, hf, cattery_home) -> None:
    def tiny_quota() -> None:  # a 20 MB quota on the files this process writes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000_000, 20_000_000))

    r = cattery("models", "download", SMOL, env=hf, home=cattery_home, preexec_fn=tiny_quota)
    [line] = error_lines(r)
    assert r.returncode != 0 and "not enough disk space" in line
    assert hub.count("GET", "/resolve/") == 0 and not blobs(hf, SMOL)


def test_offline_mode_uses_the_cache_and_asks_nothing(hub, hf, cattery_home) -> None:
    assert cattery("models", "download", SMOL, env=hf, home=cattery_home).returncode == 0
    hub.requests.clear()
    offline = {**hf, "HF_HUB_OFFLINE": "1"}
    found = cattery("chat", "--plain", "--model", f"{SMOL}:Q4_1", input="/quit\n", env=offline, home=cattery_home)
    assert found.returncode == 0, found.stderr
    search = cattery("models", "search", "smollm2", env=offline, home=cattery_home)
    assert search.returncode != 0 and "offline" in search.stderr and "HF_HUB_OFFLINE" in search.stderr
    other = cattery("models", "download", SPLIT, env=offline, home=cattery_home)
    assert other.returncode != 0 and "offline" in other.stderr
    assert hub.requests == []


def test_checkpoints_come_with_config_and_tokenizer_never_pickles(hub, hf, cattery_home) -> None:
    r = cattery("models", "download", CHECKPOINT, env=hf, home=cattery_home)
    assert r.returncode == 0, r.stderr
    names = sorted(Path(line).name for line in r.stdout.split())
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    lora = cattery("models", "download", ADAPTER, env=hf, home=cattery_home)
    assert lora.returncode == 0, lora.stderr
    assert sorted(Path(line).name for line in lora.stdout.split()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    refused = cattery("models", "download", PICKLED, env=hf, home=cattery_home)
    assert refused.returncode != 0 and "pickled" in refused.stderr


def test_choosing_among_quants(hub, hf, cattery_home) -> None:
    r = cattery("models", "download", QUANTS, env=hf, home=cattery_home)
    assert r.returncode != 0 and f"{QUANTS}:Q4_K_M" in r.stderr and f"{QUANTS}:Q8_0" in r.stderr
    bad = cattery("models", "download", f"{QUANTS}:Q5_K_S", env=hf, home=cattery_home)
    assert bad.returncode != 0 and "no GGUF file 'Q5_K_S'" in bad.stderr
    ok = cattery("models", "download", f"{QUANTS}:q8_0", env=hf, home=cattery_home)
    assert ok.returncode == 0 and Path(ok.stdout.strip()).name == "Nothing.Q8_0.gguf"
    by_file = cattery("models", "download", f"{QUANTS}:Nothing.Q4_K_M.gguf", env=hf, home=cattery_home)
    assert by_file.returncode == 0 and Path(by_file.stdout.strip()).name == "Nothing.Q4_K_M.gguf"
    missing = cattery("models", "files", "nobody/nothing", env=hf, home=cattery_home)
    assert missing.returncode != 0 and "no such repo" in missing.stderr


def test_a_hub_name_given_to_chat_is_downloaded_first(hub, hf, cattery_home) -> None:
    r = cattery("chat", "--plain", "--model", f"{SMOL}:Q4_1", input="/quit\n", env=hf, home=cattery_home)
    assert r.returncode == 0, r.stderr
    assert f"downloading {SMOL}:Q4_1" in r.stderr and FILE in r.stderr
    assert [p.name for p in blobs(hf, SMOL)] == [hub.repos[SMOL].files[FILE].sha256]


def test_the_fit_verdict_puts_what_fits_on_the_gpu(model_path: Path) -> None:
    """The arithmetic of the verdict for GPUs of several sizes (no GPU runs here: the free VRAM is given)."""
    from app.engine.metadata import read_model_info
    from app.engine.options import LoadOptions
    from app.hub.fit import VRAM_RESERVE, fit

    info = read_model_info(model_path)
    layers = info.block_count + 1
    ram_only = fit(info, 4096, LoadOptions(), ram_free=1 << 40)
    assert ram_only.verdict == "ram" and ram_only.gpu_layers == 0
    big = fit(info, 4096, LoadOptions(), ram_free=1 << 40, vram_free=8 << 30)
    assert big.verdict == "gpu" and big.gpu_layers == layers and big.vram_needed <= (8 << 30)
    from app.engine.preflight import estimate_memory

    # midway between one layer's need (the GPU compute buffer is most of it on this small model) and all
    half = VRAM_RESERVE + (estimate_memory(info, 4096, LoadOptions(), 1).vram + big.vram_needed) // 2
    part = fit(info, 4096, LoadOptions(), ram_free=1 << 40, vram_free=half)
    assert part.verdict == "partial" and 0 < part.gpu_layers < layers
    assert part.vram_needed <= half - VRAM_RESERVE and part.ram_needed < ram_only.ram_needed
    assert f"{part.gpu_layers}/{layers} layers on the GPU" in part.text(info.block_count)
    # A bigger KV cache (a longer context) leaves room for fewer layers.
    longer = fit(info, 8192, LoadOptions(), ram_free=1 << 40, vram_free=half)
    assert longer.gpu_layers <= part.gpu_layers
    tight = fit(info, 4096, LoadOptions(), ram_free=ram_only.ram_needed - 1)
    assert tight.verdict == "too_large" and "too large" in tight.text(info.block_count)
