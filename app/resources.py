"""Free disk and memory as long work must see them, and the one-line refusals when short.

Downloads, conversions, merges, quantizations and builds all check before they start,
so that a user learns in a second what would otherwise fail an hour in. They share
these numbers so that they agree: the disk counts a file-size limit (a quota set with
`ulimit -f`) as well as the free space, and memory counts a container's cgroup limit
as well as what the kernel reports available — in a container psutil sees the host.
"""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path

from app.errors import CatteryError
from app.units import fmt_size

DISK_MARGIN = 64 * 1024**2  # left free beyond the output, for metadata and everything else
CGROUP = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


class NotEnoughDisk(CatteryError):
    pass


class NotEnoughMemory(CatteryError):
    pass


def existing_folder(path: Path) -> Path:
    """The nearest folder that exists at or above `path` (where a new output will land)."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe if probe.is_dir() else probe.parent


def free_disk(path: Path) -> int:
    """Bytes one new file under `path` can take: the free space, or less under a file-size limit."""
    free = shutil.disk_usage(existing_folder(path)).free
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        free = min(free, int(soft))
    return free


def cgroup_room(root: Path, proc: Path) -> int | None:
    """What this process's memory cgroup (v2 or v1) still allows, when it has a limit.

    The group's page cache counts against its limit but the kernel drops the inactive
    part before it kills anyone, so that part is room too (as `docker stats` reckons).
    Inside a container the group's path in /proc is the host's while the container sees
    its own group mounted at the root, so the root is tried when the path is not there.
    """
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            base, names = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, names = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        for group in (base / rel.lstrip("/"), base):
            room = _group_room(group, *names)
            if room is not None:
                return room
    return None


def _group_room(group: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        limit = (group / limit_file).read_text().strip()
        used = int((group / usage_file).read_text())
    except (OSError, ValueError):
        return None
    if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:  # v1 writes "no limit" as ~2^63
        return None
    inactive = 0
    try:
        for stat in (group / "memory.stat").read_text().splitlines():
            key, _, value = stat.partition(" ")
            if key == inactive_key and value.strip().isdigit():
                inactive = int(value)
    except OSError:
        pass
    return max(0, int(limit) - used + min(inactive, used))


def available_memory() -> int:
    """Bytes that can be allocated without swapping or being killed by a container's limit."""
    import psutil

    available = int(psutil.virtual_memory().available)
    room = cgroup_room(CGROUP, PROC_CGROUP)
    return available if room is None else min(available, room)


def require_disk(path: Path, need: int, what: str) -> None:
    """Refuse in one line when `path`'s disk cannot take `need` bytes and a margin."""
    free = free_disk(path)
    if need + DISK_MARGIN > free:
        raise NotEnoughDisk(
            f"not enough disk space for {what}: needs about {fmt_size(need)}, "
            f"{existing_folder(path)} has {fmt_size(free)} free"
        )


def require_memory(need: int, what: str) -> None:
    """Refuse in one line when `need` bytes of memory are not available."""
    available = available_memory()
    if need > available:
        raise NotEnoughMemory(
            f"not enough memory for {what}: needs about {fmt_size(need)}, {fmt_size(available)} available"
        )
