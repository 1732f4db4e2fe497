"""Time and peak memory of the worst hostile inputs at every door (issue 13).

Each door's worst cases live in `tests/hostile/cases_<door>.py` as `WORST_CASES`
(zero-argument callables that build the input and push it through the real code
path); the tests use them too. Each case runs in a fresh child process, so its peak
memory is its own: the child resets its peak-RSS counter (/proc/self/clear_refs)
after the imports and reports VmHWM minus the RSS it started from.

The bounds (issue 13): accepted or refused within 5 s (a template render within
2 s), at most 256 MB beyond what the process already held, and a refusal is one line
of the project's own error type.

    python bench/hostile.py            # every door; prints a table, writes bench/out/hostile.json
    python bench/hostile.py --record   # and appends the summary to bench/RESULTS.md
    python bench/hostile.py --door cards
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import append_result_row, machine, now, write_json  # noqa: E402

SECONDS = 5.0
TEMPLATE_SECONDS = 2.0
MEMORY_MB = 256
KILL_AFTER = 60.0  # a case still running after this is reported as hung


def doors() -> list[str]:
    return sorted(p.stem.removeprefix("cases_") for p in (ROOT / "tests" / "hostile").glob("cases_*.py"))


def _cases(door: str) -> list[tuple[str, Any]]:
    module = importlib.import_module(f"tests.hostile.cases_{door}")
    return list(module.WORST_CASES)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_one(door: str, index: int) -> dict[str, Any]:
    """In the child: run one case, measure it, print one JSON line."""
    from app.errors import CatteryError

    name, case = _cases(door)[index]
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start_kib = _status_kib("VmRSS")
    t0 = time.perf_counter()
    try:
        case()
        outcome, detail = "accepted", ""
    except CatteryError as exc:
        text = str(exc)
        outcome, detail = ("refused" if "\n" not in text else "refused (several lines)"), text
    except MemoryError:
        outcome, detail = "MemoryError", ""
    except Exception as exc:  # a bug: what a user would have seen as a traceback
        outcome, detail = f"bug: {type(exc).__name__}", str(exc)[:300]
    seconds = time.perf_counter() - t0
    peak_mb = max(0, _status_kib("VmHWM") - start_kib) / 1024
    return {
        "door": door,
        "case": name,
        "outcome": outcome,
        "detail": detail[:300],
        "seconds": seconds,
        "peak_mb": peak_mb,
    }


def run_case(door: str, index: int, name: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", f"{door}:{index}"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=KILL_AFTER, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"door": door, "case": name, "outcome": "hung", "detail": "", "seconds": KILL_AFTER, "peak_mb": None}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        wall = time.perf_counter() - t0
        detail = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
        return {
            "door": door,
            "case": name,
            "outcome": f"died ({proc.returncode})",
            "detail": detail,
            "seconds": wall,
            "peak_mb": None,
        }
    return json.loads(lines[-1])


def within(row: dict[str, Any]) -> bool:
    limit = TEMPLATE_SECONDS if row["door"] == "templates" else SECONDS
    return (
        row["outcome"] in ("accepted", "refused")
        and row["seconds"] <= limit
        and row["peak_mb"] is not None
        and row["peak_mb"] <= MEMORY_MB
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--door", action="append", help="only these doors (default: all)")
    parser.add_argument("--record", action="store_true", help="append the summary to bench/RESULTS.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        door, index = args.one.split(":")
        print(json.dumps(run_one(door, int(index))), flush=True)
        return 0
    rows = []
    for door in args.door or doors():
        for index, (name, _) in enumerate(_cases(door)):
            row = run_case(door, index, name)
            row["within_bounds"] = within(row)
            rows.append(row)
            peak = "?" if row["peak_mb"] is None else f"{row['peak_mb']:.0f} MB"
            mark = "ok " if row["within_bounds"] else "OUT"
            print(f"{mark} {door:<11} {name:<58} {row['outcome']:<10} {row['seconds']:7.3f} s {peak:>8}", flush=True)
    worst_s = max((r["seconds"] for r in rows), default=0.0)
    worst_mb = max((r["peak_mb"] or 0.0 for r in rows), default=0.0)
    inside = sum(r["within_bounds"] for r in rows)
    print(f"\n{inside} of {len(rows)} cases within the bounds; slowest {worst_s:.2f} s, largest {worst_mb:.0f} MB")
    data = {
        "date": now(),
        "machine": machine(),
        "bounds": {"seconds": SECONDS, "template_seconds": TEMPLATE_SECONDS, "memory_mb": MEMORY_MB},
        "cases": rows,
    }
    print(f"wrote {write_json('hostile', data)}")
    if args.record:
        m = data["machine"]
        per_door = []
        for door in sorted({r["door"] for r in rows}):
            mine = [r for r in rows if r["door"] == door]
            slow = max(r["seconds"] for r in mine)
            big = max(r["peak_mb"] or 0.0 for r in mine)
            per_door.append(f"{door} {sum(r['within_bounds'] for r in mine)}/{len(mine)} ({slow:.2f} s, {big:.0f} MB)")
        append_result_row(
            "Hostile input: the worst cases per door (`python bench/hostile.py --record`)",
            ["date", "machine", "cases within bounds", "slowest", "largest peak", "per door: within (slowest, peak)"],
            [
                data["date"],
                f"{m['cpu'].split()[0]} {m['cpu'].split()[1] if len(m['cpu'].split()) > 1 else ''}, "
                f"{m['logical_cores']} cores",
                f"{inside} / {len(rows)}",
                f"{worst_s:.2f} s",
                f"{worst_mb:.0f} MB",
                "; ".join(per_door),
            ],
        )
    return 0 if inside == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
