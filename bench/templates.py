"""Every chat template llama.cpp ships, through Cattery's `gguf` format, against Hugging Face's render.

For each template in tests/fixtures/templates/ (llama.cpp's `models/templates/*.jinja` as
llama-cpp-python 0.3.36 vendors them): with and without a system message, 1, 2 and 3 user
turns (assistant replies between), plus a post-history instruction and a continued reply,
Cattery's prompt text is compared with transformers' way of rendering the same conversation
(tests/template_reference.py). A template that raises on a system message is run without
one (the system prompt opens the first user message, as Cattery sends it); one that cannot
render a plain chat in the reference either is listed as refusing, and Cattery must refuse
it too. Also reported: the templates Cattery cannot cut message by message (it renders their
whole window each turn) and the time one 3-turn prompt takes to build.

    python bench/templates.py

Writes bench/out/templates.json and a row in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import append_result_row, machine, median, now, write_json

BUILDS = 20  # timed builds of one prompt per template


def build_ms(path: Path, info: object) -> float:
    """Median milliseconds to build the 3-turn prompt with a system message (every render included)."""
    from app.prompt.builder import PromptBuilder
    from app.prompt.chat_template import TemplateRenderError
    from app.prompt.segments import Message
    from tests.template_reference import SYSTEM, conversation

    info = copy.copy(info)
    info.chat_template = path.read_text(encoding="utf-8")  # type: ignore[attr-defined]
    history = [Message(m["role"], m["content"]) for m in conversation(False, 3)]
    builder = PromptBuilder("gguf", info=info, system=SYSTEM)  # type: ignore[arg-type]
    times = []
    for _ in range(BUILDS):
        start = time.perf_counter()
        try:
            builder.build(history)
        except TemplateRenderError:
            return 0.0
        times.append((time.perf_counter() - start) * 1000)
    return median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from app.engine.metadata import read_model_info
    from app.hub.library import resolve_model
    from tests.template_reference import TEMPLATES, check_template, template_files

    model = resolve_model(None, [])
    info = read_model_info(model)
    rows = []
    for path in template_files():
        report = check_template(path, info)
        ms = build_ms(path, info)
        rows.append(
            {
                "template": report.name,
                "exact": report.exact,
                "conversations_compared": report.checked,
                "refuses_system_role": report.refuses_system,
                "refuses_plain_chat": report.refuses_chat,
                "segmentable": report.segmentable,
                "rendered_whole": report.not_segmentable,
                "failures": report.failures,
                "build_ms": round(ms, 3),
            }
        )
        mark = "exact" if report.exact else "NOT EXACT"
        extra = []
        if report.refuses_chat:
            extra.append("refuses a plain chat")
        if report.refuses_system:
            extra.append("no system role")
        if not report.segmentable:
            extra.append(f"rendered whole ({len(report.not_segmentable)} of {report.checked})")
        print(f"{report.name:50} {mark:9} {ms:7.2f} ms  {', '.join(extra)}", flush=True)
        for failure in report.failures:
            print(f"    {failure}")
    exact = [r for r in rows if r["exact"]]
    whole = [r["template"] for r in rows if not r["segmentable"]]
    no_system = [r["template"] for r in rows if r["refuses_system_role"]]
    refuse = [r["template"] for r in rows if r["refuses_plain_chat"]]
    timed = [r["build_ms"] for r in rows if not r["refuses_plain_chat"]]
    result = {
        "benchmark": "templates",
        "when": now(),
        "machine": machine(),
        "templates": str(TEMPLATES.relative_to(Path(__file__).resolve().parent.parent)),
        "model": model.name,
        "bos_token": info.bos_token,
        "eos_token": info.eos_token,
        "exact": len(exact),
        "total": len(rows),
        "compared": len(rows) - len(refuse),
        "rendered_whole": whole,
        "refuse_system_role": no_system,
        "refuse_plain_chat": refuse,
        "build_ms_median": round(median(timed), 3),
        "build_ms_max": round(max(timed), 3),
        "rows": rows,
    }
    out = write_json("templates", result)
    compared = len(rows) - len(refuse)
    exact_text = f"{len(exact)} of {len(rows)} ({compared} compared, {len(refuse)} refused as the reference does)"
    print(
        f"templates exact: {exact_text}; rendered whole (not segmentable): {', '.join(whole) or 'none'}; "
        f"no system role (run without one): {', '.join(no_system) or 'none'}; refuse a plain chat "
        f"(in the reference too): {', '.join(refuse) or 'none'}; a 3-turn prompt builds in "
        f"{result['build_ms_median']:.2f} ms (median; slowest {result['build_ms_max']:.2f}); wrote {out}"
    )
    if not args.no_record:
        m = result["machine"]
        append_result_row(
            "Chat templates llama.cpp ships, against Hugging Face's render (`python bench/templates.py`)",
            [
                "date",
                "machine",
                "templates",
                "exact",
                "rendered whole (not segmentable)",
                "no system role (run without one)",
                "refuse a plain chat (reference too)",
                "3-turn prompt build (median, slowest)",
            ],
            [
                result["when"],
                f"{m['cpu']}, {m['logical_cores']} cores",
                f"llama.cpp of llama-cpp-python {m['llama_cpp_python']}",
                exact_text,
                ", ".join(whole) or "none",
                ", ".join(no_system) or "none",
                ", ".join(refuse) or "none",
                f"{result['build_ms_median']:.2f} ms, {result['build_ms_max']:.2f} ms",
            ],
        )
    return 0 if len(exact) == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
