"""Capture llama.cpp's log instead of letting it write to the terminal.

llama.cpp logs through one process-wide callback. Cattery keeps the recent lines
(the reason a load failed is only ever said there, e.g. "unknown model
architecture") and appends everything to a log file when one is set.
"""

from __future__ import annotations

import ctypes
import threading
from collections import deque
from pathlib import Path
from typing import IO, Any

# enum ggml_log_level as the ggml.h shipped with the pinned llama-cpp-python has it
# (llama_cpp/_logger.py still carries an older numbering).
_LEVELS = {0: "none", 1: "debug", 2: "info", 3: "warn", 4: "error", 5: "cont"}


class LlamaLog:
    def __init__(self, max_lines: int = 2000) -> None:
        self._lines: deque[tuple[int, str, str]] = deque(maxlen=max_lines)
        self._count = 0
        self._partial = ""
        self._level = "info"
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._callback: Any = None

    def install(self, log_file: Path | None = None) -> None:
        """Route llama.cpp's log here (idempotent); start `log_file` afresh (the last run's log) if given."""
        import llama_cpp

        if log_file is not None and self._file is None:
            try:
                log_file.parent.mkdir(parents=True, exist_ok=True)
                self._file = log_file.open("w", encoding="utf-8", errors="replace")
            except OSError:
                # A read-only or full log folder must not stop a chat: llama.cpp's lines are
                # still kept for the error messages (`recent`), just not written to a file.
                self._file = None
        if self._callback is None:
            self._callback = llama_cpp.llama_log_callback(self._on_log)
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes, _user_data: Any) -> None:
        chunk = text.decode("utf-8", errors="replace") if text else ""
        with self._lock:
            if level != 5:
                self._level = _LEVELS.get(level, "info")
            if self._level == "debug":  # thousands of lines per load, of use to llama.cpp's developers only
                return
            if self._file is not None:
                self._file.write(chunk)
                if "\n" in chunk:
                    self._file.flush()
            self._partial += chunk
            *done, self._partial = self._partial.split("\n")
            for line in done:
                self._count += 1
                self._lines.append((self._count, self._level, line))

    def mark(self) -> int:
        with self._lock:
            return self._count

    def lines_since(self, mark: int) -> list[str]:
        with self._lock:
            return [line for n, _level, line in self._lines if n > mark]

    def errors_since(self, mark: int) -> list[str]:
        with self._lock:
            return [line.strip() for n, lvl, line in self._lines if n > mark and lvl == "error"]


LOG = LlamaLog()
