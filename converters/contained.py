"""Running a native parser on a stranger's file in a child process, under a time and memory bound.

Two tokenizer libraries read files from outside in native code that Python cannot
interrupt: `tokenizers` (Rust) holds the GIL while it encodes, and a tokenizer.json's
pre-tokenizer regexes run in Oniguruma, where a backtracking pattern costs up to its
retry limit (~1.5 s here) per regex, and a tokenizer can chain any number of them;
a Rust panic prints to file descriptor 2 and raises an exception that is not an
`Exception`; `sentencepiece` (C++) may abort the process on a model it cannot load.
So the work runs in a forked child: CPU time bounded by RLIMIT_CPU (so a loaded
machine does not turn an honest tokenizer into a refusal), memory by RLIMIT_DATA, wall
time by a deadline as a last resort, fd 2 sent to /dev/null; the parent gets the
result, or one line saying why there is none. Where there is no fork (Windows) the
work runs in-process.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import select
import signal
import time
from collections.abc import Callable
from typing import Any

from app.errors import CatteryError
from converters.errors import CheckpointError

CPU_SECONDS = 1  # for the fixed part of the work; `cpu_budget` adds time for the size of the input
MAX_CPU_SECONDS = 4
CPU_SECONDS_PER_MB = 0.25  # SmolLM2's 1.8 MB tokenizer.json takes 0.15 s here, Llama 3's 9 MB ~0.6 s
WALL_SECONDS = 60.0  # only for a child that sleeps or waits: CPU time is the real bound
MEMORY_MB = 512  # beyond the parent's: the Rust tokenizer of an honest 9 MB Llama-3 tokenizer.json needs ~150 MB


def cpu_budget(input_bytes: int) -> int:
    """CPU seconds for reading an input of this size: honest work grows with the input, a backtracking
    regex does not need a big one, so a small input gets little time and nothing gets more than 4 s."""
    return min(MAX_CPU_SECONDS, CPU_SECONDS + int(CPU_SECONDS_PER_MB * input_bytes / (1024 * 1024)))


def _data_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _limit(kind: int, value: int) -> None:
    _soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(kind, (value, hard))


def _child(fn: Callable[..., Any], args: tuple[Any, ...], write_fd: int, cpu: int, memory_mb: int) -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        _limit(resource.RLIMIT_CPU, cpu)
        _limit(resource.RLIMIT_DATA, _data_bytes() + memory_mb * 1024 * 1024)
        try:
            result: tuple[Any, ...] = ("ok", fn(*args))
        except CatteryError as exc:
            result = ("refused", str(exc))
        except MemoryError:
            result = ("memory",)
        except BaseException as exc:
            text = str(exc).strip().splitlines()
            result = ("failed", f"{type(exc).__name__}: {text[0] if text else ''}".strip(": "))
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(write_fd, "wb") as w:
            w.write(data)
    finally:
        os._exit(0)


def run_contained(
    fn: Callable[..., Any],
    *args: Any,
    what: str,
    cpu_seconds: int = CPU_SECONDS,
    memory_mb: int = MEMORY_MB,
    wall_seconds: float = WALL_SECONDS,
) -> Any:
    """`fn(*args)` in a child process; its result (which must pickle), or a CheckpointError naming `what`.

    A CatteryError raised in the child comes back as a CheckpointError with its message.
    """
    if not hasattr(os, "fork"):  # pragma: no cover - Windows
        return fn(*args)
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise CheckpointError(f"{what}: cannot start the process that reads it ({exc.strerror or exc})") from None
    if pid == 0:  # pragma: no cover - the child, measured through its result
        os.close(read_fd)
        _child(fn, args, write_fd, cpu_seconds, memory_mb)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + wall_seconds
    timed_out = False
    try:
        with os.fdopen(read_fd, "rb") as r:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select([r], [], [], min(left, 1.0))
                if not ready:
                    continue
                chunk = os.read(r.fileno(), 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    except BaseException:  # Ctrl-C while waiting: the child goes too
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(pid, 0)
        raise
    if timed_out:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # SIGCHLD ignored: the child was reaped already
        status = 0
    if timed_out:
        raise CheckpointError(f"{what}: reading it took more than {wall_seconds:.0f} s; refused")
    if not chunks:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        if sig == signal.SIGXCPU or sig == signal.SIGKILL:
            raise CheckpointError(f"{what}: reading it took more than {cpu_seconds} s of work; refused")
        name = signal.Signals(sig).name if sig else f"exit status {os.WEXITSTATUS(status)}"
        raise CheckpointError(f"{what}: the reader crashed on it ({name}); not a file it can read")
    result = pickle.loads(b"".join(chunks))
    kind = result[0]
    if kind == "ok":
        return result[1]
    if kind == "refused":
        raise CheckpointError(result[1])
    if kind == "memory":
        raise CheckpointError(f"{what}: reading it needs more than {memory_mb} MB of memory; refused")
    raise CheckpointError(f"{what}: cannot be read ({result[1]})")
