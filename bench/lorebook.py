"""What lorebook activation does to KV-cache reuse, with entries at the card or at the end.

A 12-turn chat with SillyTavern's Seraphina card and its lorebook, on the bundled
model: the user's messages mention different keys (forest, beasts, the glade,
magic), so entries switch on and off as the scan window moves. Run once with the
entries placed around the character (SillyTavern's placement: a change rewrites the
prompt near its start) and once with them right before the reply (`--lore-placement
end`). Each turn reports the active entries, the tokens evaluated and the time to
first token. Replies are fixed text fed into the cache as if generated.

    python bench/lorebook.py

Writes bench/out/lorebook.json and a row in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import append_result_row, machine, median, now, write_json

ROOT = Path(__file__).resolve().parent.parent
SERAPHINA = ROOT / "tests" / "fixtures" / "cards" / "Seraphina.png"
USER_LINES = [
    "Thank you for helping me. Where am I?",
    "Is this forest dangerous at night?",
    "What were those beasts that attacked me?",
    "Can I rest here a little longer?",
    "Tell me about this glade, it feels safe.",
    "How did you learn to heal wounds like that?",
    "Is your magic connected to the glade?",
    "I would like to hear about your powers.",
    "What is Eldoria like beyond the woods?",
    "Could the Shadowfangs find us here?",
    "Thank you. I feel much better now.",
    "Will you walk with me to the edge of the forest?",
]
REPLY = (
    '*Seraphina nods softly, her amber eyes warm.* "You are safe with me. Rest, and let the glade do its '
    'quiet work. When you are ready, we will talk more about what lies beyond these trees."'
)


def run(engine, tok, placement: str, ctx: int) -> list[dict]:
    from app.cards.lorebook import book_from_spec
    from app.cards.prompting import LoreSession, Persona, card_prompt
    from app.cards.read import read_card
    from app.engine.options import SamplerSettings
    from app.prompt.builder import PromptBuilder
    from app.prompt.segments import Message, Speakers
    from app.prompt.window import WindowState

    card = read_card(SERAPHINA)
    cp = card_prompt(card, global_system="", persona=Persona("Traveller"))
    lore = LoreSession(cp, [book_from_spec(card.data["character_book"], card.name)], placement, tok.count)
    builder = PromptBuilder(
        "chatml",
        info=engine.info,
        tokenizer=tok,
        speakers=Speakers(cp.user, cp.char),
        examples=cp.examples,
        post_history=cp.post_history,
        dynamic=lore,
    )
    history = [Message("assistant", cp.greetings[0])]
    state = WindowState()
    first_token = SamplerSettings(temperature=0.0, max_tokens=1)
    engine.reset()
    rows = []
    for i, line in enumerate(USER_LINES):
        history.append(Message("user", line))
        built = builder.build(history, n_ctx=ctx, reserve=256, state=state)
        gen = engine.generate(built.tokens, first_token)
        gen.result()
        s = gen.stats
        active = [a.entry.uid for a in lore.active]
        rows.append(
            {
                "turn": i,
                "active": active,
                "prompt_tokens": s.prompt_tokens,
                "evaluated": s.prompt_evaluated,
                "ttft": s.time_to_first_token,
            }
        )
        print(
            f"{placement:4} turn {i:2d}: entries {','.join(active) or '-':8} prompt {s.prompt_tokens:5d}, "
            f"evaluated {s.prompt_evaluated:5d}, first token {s.time_to_first_token:6.2f} s",
            flush=True,
        )
        history.append(Message("assistant", REPLY))
        fmt = builder.fmt
        reply_tokens = tok.segment(fmt.assistant_prefix + REPLY)
        engine.generate(built.tokens[: -len(built.segments[-1].tokens)] + reply_tokens, first_token).result()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from app.engine.engine import Engine
    from app.engine.options import LoadOptions
    from app.hub.library import resolve_model
    from app.prompt.tokens import tokenizer_from

    path = resolve_model(None, [])
    engine = Engine()
    engine.load(path, LoadOptions(ctx=args.ctx))
    tok = tokenizer_from(engine)
    at_card = run(engine, tok, "card", args.ctx)
    at_end = run(engine, tok, "end", args.ctx)
    engine.close()
    total_card = sum(r["evaluated"] for r in at_card[1:])
    total_end = sum(r["evaluated"] for r in at_end[1:])
    ttft_card = median([r["ttft"] for r in at_card[1:]])
    ttft_end = median([r["ttft"] for r in at_end[1:]])
    result = {
        "benchmark": "lorebook",
        "when": now(),
        "machine": machine(),
        "model": path.name,
        "ctx": args.ctx,
        "card": at_card,
        "end": at_end,
        "evaluated_card": total_card,
        "evaluated_end": total_end,
        "ttft_median_card": ttft_card,
        "ttft_median_end": ttft_end,
    }
    out = write_json("lorebook", result)
    print(
        f"turns 1-{len(USER_LINES) - 1}: entries at the card evaluate {total_card} tokens "
        f"(median first token {ttft_card:.2f} s); at the end {total_end} ({ttft_end:.2f} s); wrote {out}"
    )
    if not args.no_record:
        m = result["machine"]
        append_result_row(
            "Lorebook activation and KV-cache reuse (`python bench/lorebook.py`)",
            [
                "date",
                "machine",
                "model",
                "turns",
                "evaluated, entries at the card",
                "evaluated, entries at the end",
                "first token (median), card",
                "first token (median), end",
            ],
            [
                result["when"],
                f"{m['cpu']}, {m['logical_cores']} cores",
                path.name,
                str(len(USER_LINES) - 1),
                str(total_card),
                str(total_end),
                f"{ttft_card:.2f} s",
                f"{ttft_end:.2f} s",
            ],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
