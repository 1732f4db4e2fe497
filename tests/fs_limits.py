"""A full disk and a read-only folder, for real, in a test.

Two ways, both real failures of the real system calls (nothing mocked):

- `in_private_tmpfs(folder, script)`: runs a bash script in its own mount namespace
  (`unshare --mount`) where `folder` is a fresh tmpfs of a few hundred KiB, so writes
  fail with ENOSPC when it fills, and `mount -o remount,ro` makes it read-only (EROFS,
  which root cannot bypass as it bypasses chmod). The mount vanishes with the process:
  nothing is left mounted on the machine. Needs root with CAP_SYS_ADMIN, which the
  tests and CI have here; elsewhere those tests are skipped, saying why.
- `with_file_size_limit(fn, limit)`: calls `fn` under RLIMIT_FSIZE, so a write past
  `limit` bytes fails with EFBIG, which is how a quota or a full disk looks to a
  program: works for any user, anywhere (use it inside `tests.hostile.bounds.run_bounded`,
  which forks, so the limit never reaches the test process).
"""

from __future__ import annotations

import functools
import os
import resource
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT


@functools.lru_cache(maxsize=1)
def private_mounts() -> str | None:
    """None when a private tmpfs can be mounted here, else why not."""
    probe = 'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d" && umount "$d" && rmdir "$d"'
    try:
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c", probe],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare is not usable here: {exc}"
    return None if proc.returncode == 0 else f"cannot mount a private tmpfs: {proc.stderr.strip()[:200]}"


def need_private_mounts() -> None:
    why = private_mounts()
    if why:
        pytest.skip(why)


_LEAVE_FREE = (
    "import os, sys\n"
    "st = os.statvfs(sys.argv[1])\n"
    "n = st.f_bavail * st.f_frsize - int(sys.argv[2]) * 1024\n"
    "open(os.path.join(sys.argv[1], '.filler'), 'wb').write(bytes(max(0, n)))\n"
)


def in_private_tmpfs(
    folder: Path, script: str, *, size_kib: int = 512, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `script` (bash) with `folder` a fresh tmpfs of `size_kib`; `$PY` runs Cattery's Python.

    Inside the script: `cattery ARGS` is the real command line (`python -m app`);
    `fill_up` fills the tmpfs, `leave_free KIB` fills it but KIB, `free_up` undoes
    either, `readonly_now` remounts it read-only.
    """
    folder.mkdir(parents=True, exist_ok=True)
    py = shlex.quote(sys.executable)
    prelude = (
        "set -u\n"
        f"mount -t tmpfs -o size={size_kib}k tmpfs {shlex.quote(str(folder))} || exit 99\n"
        f"PY={py}\n"
        f'cattery() {{ {py} -m app "$@"; }}\n'
        f"readonly_now() {{ mount -o remount,ro {shlex.quote(str(folder))}; }}\n"
        f"fill_up() {{ head -c 1G /dev/zero > {shlex.quote(str(folder))}/.filler 2>/dev/null; true; }}\n"
        f'leave_free() {{ $PY -c {shlex.quote(_LEAVE_FREE)} {shlex.quote(str(folder))} "$1"; }}\n'
        f"free_up() {{ rm -f {shlex.quote(str(folder))}/.filler; }}\n"
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", prelude + script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def with_file_size_limit(fn: Callable[..., Any], limit: int, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args)` with every file write past `limit` bytes failing (EFBIG). Call it in a forked child."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return fn(*args, **kwargs)
