"""Running one hostile input under the bounds every door must keep (issue 13).

`run_bounded(fn, ...)` calls `fn` in a forked child with a memory limit
(RLIMIT_DATA: what the child already uses plus `memory_mb`) and a wall-clock
deadline kept by the parent, and says how it ended:

- "ok": it returned (the input was accepted);
- "refused": it raised the project's own error (`CatteryError`), whose message is
  one line;
- "bug": any other exception (a traceback a user would have seen), with its text;
- "memory": it ran past the memory bound (MemoryError, or killed);
- "timeout": it ran past the deadline and was killed.

A fork per input keeps a runaway case from taking the test process with it; the
child never returns into pytest (it leaves through `os._exit`).
"""

from __future__ import annotations

import os
import pickle
import resource
import select
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.errors import CatteryError

SECONDS = 5.0  # each input: accepted or refused within this
MEMORY_MB = 256  # beyond what the process already holds


@dataclass
class Outcome:
    kind: str  # ok | refused | bug | memory | timeout
    detail: str = ""
    seconds: float = 0.0
    error_type: str = ""
    value: Any = None

    def __str__(self) -> str:
        return f"{self.kind} after {self.seconds:.2f}s: {self.error_type} {self.detail}".strip()

    @property
    def bounded(self) -> bool:
        """Accepted or refused in one line, within the bounds."""
        return self.kind == "ok" or (self.kind == "refused" and "\n" not in self.detail)


def _data_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1])
    return 0


def run_bounded(
    fn: Callable[..., Any],
    *args: Any,
    seconds: float = SECONDS,
    memory_mb: int = MEMORY_MB,
    keep_value: bool = False,
    **kwargs: Any,
) -> Outcome:
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: run, report, leave without unwinding into pytest
        os.close(read_fd)
        code = 0
        try:
            limit = (_data_kib() * 1024) + memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
            t0 = time.monotonic()
            try:
                value = fn(*args, **kwargs)
                out = Outcome("ok", value=value if keep_value else None)
            except CatteryError as exc:
                out = Outcome("refused", str(exc), error_type=type(exc).__name__)
            except MemoryError:
                out = Outcome("memory", "MemoryError", error_type="MemoryError")
            except BaseException as exc:
                out = Outcome("bug", traceback.format_exc()[-3000:], error_type=type(exc).__name__)
            out.seconds = time.monotonic() - t0
            try:
                data = pickle.dumps(out)
            except Exception:  # an unpicklable value
                out.value = None
                data = pickle.dumps(out)
            with os.fdopen(write_fd, "wb") as w:
                w.write(data)
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = start + seconds
    timed_out = False
    with os.fdopen(read_fd, "rb") as r:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r.fileno(), 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    elapsed = time.monotonic() - start
    if timed_out:
        return Outcome("timeout", f"killed after {seconds:.1f}s", elapsed)
    if not chunks:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        return Outcome("memory" if sig == signal.SIGKILL else "bug", f"child died (status {status})", elapsed)
    return pickle.loads(b"".join(chunks))


def assert_bounded(fn: Callable[..., Any], *args: Any, what: str = "", **kwargs: Any) -> Outcome:
    """Run `fn` bounded and fail the test unless it was accepted or refused in one line."""
    out = run_bounded(fn, *args, **kwargs)
    assert out.bounded, f"{what or getattr(fn, '__name__', fn)}: {out}"
    return out


def assert_refused(fn: Callable[..., Any], *args: Any, match: str = "", what: str = "", **kwargs: Any) -> Outcome:
    """Run `fn` bounded and fail the test unless it was refused in one line (mentioning `match`)."""
    out = run_bounded(fn, *args, **kwargs)
    assert out.kind == "refused" and "\n" not in out.detail, f"{what or getattr(fn, '__name__', fn)}: {out}"
    if match:
        assert match.lower() in out.detail.lower(), f"{what}: {out.detail!r} does not mention {match!r}"
    return out


def assert_one_line_failure(proc: Any, *, match: str = "") -> str:
    """A `cattery` run (tests.conftest.run_cattery) that failed as a user mistake should:
    non-zero, end with one `cattery: error:` line on stderr, no traceback, no internal error.

    Lines before it are allowed (warnings, what a download was about to fetch); a second
    error line is not.
    """
    err = proc.stderr.strip()
    lines = err.splitlines()
    assert proc.returncode not in (0, 70), f"exit {proc.returncode}: {err[-2000:]}"
    assert "Traceback" not in err and "internal error" not in err, err[-3000:]
    errors = [line for line in lines if line.startswith("cattery: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-2000:]
    if match:
        assert match.lower() in errors[0].lower(), f"{errors[0]!r} does not mention {match!r}"
    return errors[0]


def mutate_bytes(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """`data` with each edit `(kind, at, value)` applied: 0 overwrites the byte at `at`, 1 inserts
    `value` there, 2 deletes it, 3 cuts the data there (`at` is taken modulo the length)."""
    buf = bytearray(data)
    for kind, at, value in edits:
        if not buf:
            buf.append(value)
            continue
        at %= len(buf)
        if kind == 0:
            buf[at] = value
        elif kind == 1:
            buf.insert(at, value)
        elif kind == 2:
            del buf[at]
        else:
            del buf[at:]
    return bytes(buf)


def byte_edits() -> Any:
    """The hypothesis strategy for `mutate_bytes`: one to six edits anywhere in a file."""
    from hypothesis import strategies as st

    return st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6)
