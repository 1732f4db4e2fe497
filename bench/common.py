"""What every benchmark records: the machine, the versions, and where results go."""

from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
OUT_DIR = BENCH_DIR / "out"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    import psutil

    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "llama_cpp_python": version("llama-cpp-python"),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def write_json(name: str, data: dict[str, Any], path: Path | None = None) -> Path:
    path = path or OUT_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def append_result_row(section: str, header: list[str], row: list[str]) -> None:
    """Add a row under `## section` in bench/RESULTS.md, creating the table if needed."""
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    title = f"## {section}"
    line = "| " + " | ".join(row) + " |"
    if title not in text:
        table = "| " + " | ".join(header) + " |\n|" + "|".join("---" for _ in header) + "|\n"
        text = text.rstrip("\n") + f"\n\n{title}\n\n{table}{line}\n"
    else:
        start = text.index(title)
        nxt = text.find("\n## ", start + len(title))
        end = len(text) if nxt == -1 else nxt
        block = text[start:end].rstrip("\n") + "\n" + line + "\n"
        text = text[:start] + block + ("" if nxt == -1 else text[end:])
    RESULTS_MD.write_text(text)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def gpu_offload(script: str, rehearse: bool) -> bool | None:
    """Whether this llama.cpp build offloads; None (after one skip line) when the GPU script
    `script` has nothing to check here and was not asked to rehearse on the CPU."""
    from app.engine import native

    offload = native.offload_supported()
    if not offload and not rehearse:
        print(f"{script}: skipped (no GPU offload in this llama.cpp build)")
        return None
    return offload


def devices() -> list[dict[str, Any]]:
    """Every device ggml registered (the CPU too), with its free and total memory."""
    from app.engine import native

    return [{"name": n, "type": t, "free": f, "total": tot} for n, t, f, tot in native.ggml_devices()]
