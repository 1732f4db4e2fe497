"""Free disk and memory as the converters' and the hub's checks see them.

A machine with less memory or a container limit cannot be made here, so the cgroup
files are written in a temporary folder and the module pointed at them; everything
else (the merge, its plan, its refusal, what it leaves on disk) runs for real.
"""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app import resources
from app.resources import NotEnoughDisk, NotEnoughMemory, cgroup_room, free_disk, require_disk, require_memory
from converters.merge import merge, peak_memory, plan_merge
from converters.merge_recipe import parse_recipe
from tests.llama_checkpoints import make_llama


def fake_cgroup(tmp_path: Path, version: int, limit: str, used: int) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    proc = tmp_path / "proc-self-cgroup"
    if version == 2:
        group = root / "user.slice" / "app"
        group.mkdir(parents=True)
        (group / "memory.max").write_text(limit + "\n")
        (group / "memory.current").write_text(f"{used}\n")
        proc.write_text("0::/user.slice/app\n")
    else:
        group = root / "memory" / "docker" / "abc"
        group.mkdir(parents=True)
        (group / "memory.limit_in_bytes").write_text(limit + "\n")
        (group / "memory.usage_in_bytes").write_text(f"{used}\n")
        proc.write_text("5:cpuset:/\n4:memory:/docker/abc\n0::/\n")
    return root, proc


def test_cgroup_limits_v1_and_v2(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path / "v2", 2, str(500 * 2**20), 200 * 2**20)
    assert cgroup_room(root, proc) == 300 * 2**20
    root, proc = fake_cgroup(tmp_path / "v2max", 2, "max", 1)
    assert cgroup_room(root, proc) is None
    root, proc = fake_cgroup(tmp_path / "v1", 1, str(2**30), 2**29)
    assert cgroup_room(root, proc) == 2**29
    root, proc = fake_cgroup(tmp_path / "v1none", 1, "9223372036854771712", 5)
    assert cgroup_room(root, proc) is None
    assert cgroup_room(tmp_path / "nothing", tmp_path / "no-proc") is None
    # page cache the kernel would drop first is room; a container sees its group at the root
    root, proc = fake_cgroup(tmp_path / "cache", 2, str(1000 * 2**20), 900 * 2**20)
    (root / "user.slice" / "app" / "memory.stat").write_text(f"anon 1\ninactive_file {600 * 2**20}\n")
    assert cgroup_room(root, proc) == 700 * 2**20
    root, proc = fake_cgroup(tmp_path / "docker", 1, str(2**30), 2**28)
    for name in ("memory.limit_in_bytes", "memory.usage_in_bytes"):
        (root / "memory" / "docker" / "abc" / name).rename(root / "memory" / name)
    (root / "memory" / "memory.stat").write_text(f"inactive_file 5\ntotal_inactive_file {2**27}\n")
    assert cgroup_room(root, proc) == 2**30 - 2**28 + 2**27
    # this machine: whatever it has, a positive number no larger than psutil's
    import psutil

    # (psutil asked before and after: free memory moves between two reads on a busy machine)
    before = psutil.virtual_memory().available
    mine = resources.available_memory()
    after = psutil.virtual_memory().available
    assert 0 < mine <= max(before, after)


def test_a_merge_that_does_not_fit_in_memory_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_llama(tmp_path / "a", seed=1, hidden=64, inter=96, vocab=512)
    make_llama(tmp_path / "b", seed=2, hidden=64, inter=96, vocab=512)
    recipe = parse_recipe(
        {
            "base": str(tmp_path / "a"),
            "steps": [{"method": "linear", "models": [str(tmp_path / "b")], "weights": [1, 1]}],
        },
        tmp_path,
    )
    need = peak_memory(plan_merge(recipe))
    root, proc = fake_cgroup(tmp_path, 2, str(need // 2), 0)
    monkeypatch.setattr(resources, "CGROUP", root)
    monkeypatch.setattr(resources, "PROC_CGROUP", proc)
    with pytest.raises(NotEnoughMemory) as err:
        merge(recipe, tmp_path / "out")
    assert "\n" not in str(err.value) and "not enough memory for the merge" in str(err.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    root, proc = fake_cgroup(tmp_path / "roomy", 2, str(need * 2), 0)
    monkeypatch.setattr(resources, "CGROUP", root)
    monkeypatch.setattr(resources, "PROC_CGROUP", proc)
    merge(recipe, tmp_path / "out")
    assert (tmp_path / "out" / "config.json").exists()


def test_disk_checks_count_a_file_size_limit(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    assert abs(free_disk(tmp_path / "not" / "made" / "yet") - free) < 2**30  # the nearest folder that exists
    with pytest.raises(NotEnoughDisk, match=r"not enough disk space for x\.gguf: needs about"):
        require_disk(tmp_path, free + 10**9, "x.gguf")
    require_disk(tmp_path, 1000, "x.gguf")
    with pytest.raises(NotEnoughMemory, match="not enough memory for a test"):
        require_memory(1 << 62, "a test")

    def quota() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10**6, 10**6))

    code = "from pathlib import Path; from app.resources import free_disk; print(free_disk(Path('.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=quota, check=True)
    assert int(out.stdout) == 10**6
