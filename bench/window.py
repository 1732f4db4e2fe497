"""A long chat at a full context: Cattery's message-aligned shift against re-evaluation.

A 40-turn chat on the bundled model at a 4096-token context, run twice in one
process with the same messages:

- Cattery: the window evicts whole exchanges with slack, and the engine shifts the
  kept turns in the KV cache instead of evaluating them again;
- reference: what a client that trims the oldest messages to fit does with
  llama-cpp-python: the window is trimmed every turn once full (no slack), and
  everything after the first changed token is evaluated again (no shift).

Each turn measures the prompt's evaluation (time to first token, tokens evaluated).
The assistant's replies are fixed text fed into the cache as if generated, so both
runs see identical conversations.

    python bench/window.py [--turns 40] [--ctx 4096]

Writes bench/out/window.json and rows in bench/RESULTS.md. Targets at steady state
(every turn after the window first moved): tokens evaluated <= 1.1 x the new turn's
tokens, time to first token >= 10 x better than the reference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import append_result_row, machine, median, now, write_json

TOPICS = [
    "the sea",
    "old lighthouses",
    "baking bread",
    "mountain trains",
    "winter birds",
    "city gardens",
    "paper boats",
    "night markets",
    "clockmakers",
    "rainy libraries",
]


def user_text(i: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    return (
        f"Turn {i}. Tell me something new about {topic}: what should a curious visitor notice first, "
        f"and what do most people miss about {topic} when they only pass by quickly?"
    )


def reply_text(i: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    return (
        f"Here is something about {topic}. " + "A careful visitor notices the small details first: the "
        "sounds, the light, the way people move through the place and greet each other. Most people "
        f"miss the history that {topic} carries, the names on old signs, and the quiet routines that "
        "keep everything running from one day to the next. "
    ) * 2


def run(engine, tok, turns: int, ctx: int, reserve: int, shift: bool, label: str) -> list[dict]:
    from app.engine.options import SamplerSettings
    from app.prompt.builder import PromptBuilder
    from app.prompt.segments import Message
    from app.prompt.window import WindowState

    builder = PromptBuilder(
        "chatml",
        info=engine.info,
        tokenizer=tok,
        slack=0.25 if shift else 0.0,
        system="You are a knowledgeable, friendly guide. Answer in a few warm sentences.",
    )
    fmt = builder.fmt
    assert fmt is not None
    suffix_tokens = len(tok.segment(fmt.assistant_suffix))
    state = WindowState()
    history: list[Message] = []
    first_token = SamplerSettings(temperature=0.0, max_tokens=1)
    engine.reset()
    rows = []
    for i in range(turns):
        history.append(Message("user", user_text(i)))
        built = builder.build(history, n_ctx=ctx, reserve=reserve, state=state)
        gen = engine.generate(built.tokens, first_token, allow_shift=shift)
        gen.result()
        s = gen.stats
        new_turn = len(built.segments[-2].tokens) + len(built.segments[-1].tokens) + (suffix_tokens if i else 0)
        rows.append(
            {
                "turn": i,
                "prompt_tokens": s.prompt_tokens,
                "evaluated": s.prompt_evaluated,
                "reused": s.prompt_reused,
                "shifted": s.prompt_shifted,
                "new_turn_tokens": new_turn,
                "ttft": s.time_to_first_token,
                "window_start": built.kept[0],
                "evicted": len(built.evicted_now),
            }
        )
        print(
            f"{label} turn {i:2d}: prompt {s.prompt_tokens:4d}, evaluated {s.prompt_evaluated:4d} "
            f"(new turn {new_turn:3d}, shifted {s.prompt_shifted:4d}), first token {s.time_to_first_token:6.2f} s"
            + (f", {len(built.evicted_now)} messages evicted" if built.evicted_now else ""),
            flush=True,
        )
        # The reply goes into the cache as if it had been generated.
        reply = Message("assistant", reply_text(i))
        history.append(reply)
        reply_tokens = tok.segment(fmt.assistant_prefix + reply.content)
        engine.generate(
            built.tokens[: -len(built.segments[-1].tokens)] + reply_tokens, first_token, allow_shift=shift
        ).result()
    return rows


def steady(rows: list[dict]) -> list[dict]:
    first_move = next((r["turn"] for r in rows if r["window_start"] > 0), None)
    return [r for r in rows if first_move is not None and r["turn"] > first_move]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .gguf path (default: the bundled model)")
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--reserve", type=int, default=512)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from app.engine.engine import Engine
    from app.engine.options import LoadOptions
    from app.hub.library import resolve_model
    from app.prompt.tokens import tokenizer_from

    path = resolve_model(args.model, [])
    engine = Engine()
    report = engine.load(path, LoadOptions(ctx=args.ctx))
    tok = tokenizer_from(engine)
    cattery = run(engine, tok, args.turns, args.ctx, args.reserve, True, "cattery  ")
    reference = run(engine, tok, args.turns, args.ctx, args.reserve, False, "reference")
    engine.close()

    sc, sr = steady(cattery), steady(reference)
    both = sorted({r["turn"] for r in sc} & {r["turn"] for r in sr})
    eval_ratio = [r["evaluated"] / r["new_turn_tokens"] for r in sc]
    ttft_c = median([r["ttft"] for r in cattery if r["turn"] in both])
    ttft_r = median([r["ttft"] for r in reference if r["turn"] in both])
    result = {
        "benchmark": "window",
        "when": now(),
        "machine": machine(),
        "model": path.name,
        "settings": {
            "turns": args.turns,
            "ctx": report.n_ctx,
            "reserve": args.reserve,
            "threads": report.threads,
            "format": "chatml",
        },
        "cattery": cattery,
        "reference": reference,
        "steady_turns": both,
        "cattery_evaluated_over_new_max": max(eval_ratio) if eval_ratio else None,
        "cattery_evaluated_over_new_median": median(eval_ratio),
        "ttft_median_cattery": ttft_c,
        "ttft_median_reference": ttft_r,
        "ttft_speedup": ttft_r / ttft_c if ttft_c else None,
        "targets": {"evaluated_over_new": 1.1, "ttft_speedup": 10.0},
    }
    out = write_json("window", result)
    print(
        f"steady state ({len(both)} turns): Cattery evaluates {median(eval_ratio):.2f}x the new turn's tokens "
        f"(max {max(eval_ratio) if eval_ratio else 0:.2f}, target <= 1.1); first token {ttft_c:.2f} s vs "
        f"{ttft_r:.2f} s re-evaluating: {ttft_r / ttft_c if ttft_c else 0:.1f}x (target >= 10); wrote {out}"
    )
    if not args.no_record:
        m = result["machine"]
        append_result_row(
            "Long chat at a full context: shift vs re-evaluation (`python bench/window.py`)",
            [
                "date",
                "machine",
                "model",
                "turns",
                "ctx",
                "steady turns",
                "evaluated / new turn (median, max)",
                "first token: Cattery",
                "first token: reference",
                "speed-up",
            ],
            [
                result["when"],
                f"{m['cpu']}, {m['logical_cores']} cores",
                path.name,
                str(args.turns),
                str(report.n_ctx),
                str(len(both)),
                f"{median(eval_ratio):.2f}, {max(eval_ratio) if eval_ratio else 0:.2f}",
                f"{ttft_c:.2f} s",
                f"{ttft_r:.2f} s",
                f"{ttft_r / ttft_c if ttft_c else 0:.1f}×",
            ],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
