"""Instant reopen (issue 18): a chat's KV cache kept on disk and in memory, against evaluating it again.

On the bundled model at a 4096-token context:

- reopen: a chat whose window holds ~3.9k tokens is evaluated, kept (`KVKeeper.keep`: a copy on
  the engine thread, the file on the writer thread), the engine closed and a fresh one loaded
  (as a restart does); then the next reply's time to first token with the snapshot put back
  (`KVKeeper.restore`) against the same reply on a cold cache, and the tokens evaluated;
- switching: two long chats (~1.6k tokens each, too many for one cache together) alternate 5
  times, each with a new message: total tokens evaluated against the new messages' tokens;
- saving: how long the engine thread is held (the copy), how long the file takes, its size.

    python bench/reopen.py

Writes bench/out/reopen.json and a row in bench/RESULTS.md. Targets: time to first token >= 20x
better than re-evaluating; tokens evaluated on reopen = the new message only; switching
evaluates <= 1.1x the new messages' tokens.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import append_result_row, machine, now, write_json

FILLER = [
    "the sea at dawn",
    "old lighthouses",
    "baking bread in winter",
    "mountain trains",
    "birds that stay for the snow",
    "gardens on city roofs",
    "paper boats on a canal",
    "night markets",
    "a clockmaker's shop",
    "a library in the rain",
]


@dataclass
class FakeChat:
    """What the keeper needs of a chat: its id."""

    chat_id: int


def chat_tokens(engine, n_tokens: int, salt: str) -> list[int]:
    """A ChatML conversation of about `n_tokens`, ending with the assistant's turn opened."""
    text = "<|im_start|>system\nYou are a patient storyteller.<|im_end|>\n"
    i = 0
    while len(engine.tokenize(text, add_bos=False)) < n_tokens - 60:
        topic = FILLER[i % len(FILLER)]
        text += f"<|im_start|>user\n{salt} Tell me about {topic}, part {i}.<|im_end|>\n"
        text += (
            f"<|im_start|>assistant\nHere is what I know of {topic}: it is quiet, old and kind, part {i}.<|im_end|>\n"
        )
        i += 1
    return engine.tokenize(text, add_bos=False)


def turn(engine, history: list[int], message: str, sampler) -> tuple[list[int], float, int, int]:
    new = engine.tokenize(f"<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n", add_bos=False)
    prompt = history + new
    gen = engine.generate(prompt, sampler)
    gen.result()
    s = gen.stats
    return prompt, s.time_to_first_token, s.prompt_evaluated, len(new)


def main() -> int:
    from app.engine.engine import Engine
    from app.engine.options import LoadOptions, SamplerSettings
    from app.hub.bundled import find_bundled_model
    from app.session.kv_keeper import KVKeeper
    from app.session.snapshots import SnapshotStore, StateCache

    model = find_bundled_model()
    opts = LoadOptions(ctx=4096, threads=2)
    greedy = SamplerSettings(temperature=0.0, max_tokens=4)
    folder = Path(tempfile.mkdtemp(prefix="cattery-reopen-"))
    store = SnapshotStore(folder, 4 << 30)

    # 1. Reopen: a cold evaluation against a restored snapshot, on a freshly loaded engine.
    engine = Engine()
    engine.load(model, opts)
    history = chat_tokens(engine, 3900, "A")
    engine.reset()
    _, cold_ttft, cold_eval, _ = turn(engine, history, "And the harbour?", greedy)
    keeper = KVKeeper(engine, store, None)
    t0 = time.perf_counter()
    state = engine.export_state()  # the chat after that reply, as a chat is kept
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    size = store.save(1, state)
    write_s = time.perf_counter() - t0
    keeper.close()
    after_reply = state.tokens + engine.tokenize("<|im_end|>\n", add_bos=False)
    engine.close()

    engine = Engine()
    engine.load(model, opts)
    keeper = KVKeeper(engine, store, StateCache(1 << 30))
    t0 = time.perf_counter()
    restored = keeper.restore(FakeChat(1))
    restore_s = time.perf_counter() - t0
    _, warm_ttft, warm_eval, new_tokens = turn(engine, after_reply, "And the lighthouse?", greedy)
    new_tokens += 2  # the reply's end marker comes with the new message
    reopen_ttft = restore_s + warm_ttft

    # 2. Switching between two long chats, 5 times each way.
    chats = {2: chat_tokens(engine, 1600, "B"), 3: chat_tokens(engine, 1600, "C")}
    evaluated = new_total = 0
    current = None
    for i in range(10):
        chat_id = 2 + i % 2
        if current is not None:
            keeper.keep(FakeChat(current))
        if i >= 2:  # each chat has been evaluated once: from now on it comes back from memory
            keeper.restore(FakeChat(chat_id))
        prompt, _, n_eval, n_new = turn(engine, chats[chat_id], f"Question {i}: what else?", greedy)
        if i >= 2:
            evaluated += n_eval
            new_total += n_new
        chats[chat_id] = prompt + engine.tokenize(" Yes.<|im_end|>\n", add_bos=False)
        current = chat_id
    keeper.close()
    engine.close()

    result = {
        "date": now(),
        "machine": machine(),
        "model": model.name,
        "ctx": 4096,
        "reopen": {
            "history_tokens": len(history),
            "cold_ttft_s": cold_ttft,
            "cold_evaluated": cold_eval,
            "restored_tokens": restored.tokens,
            "restore_s": restore_s,
            "reopen_ttft_s": reopen_ttft,
            "reopen_evaluated": warm_eval,
            "new_message_tokens": new_tokens,
            "speedup": cold_ttft / reopen_ttft if reopen_ttft else 0.0,
        },
        "switching": {
            "evaluated": evaluated,
            "new_message_tokens": new_total,
            "ratio": evaluated / new_total if new_total else 0.0,
        },
        "save": {"export_engine_thread_s": export_s, "write_s": write_s, "bytes": size},
    }
    write_json("reopen", result)
    r, sw, sv = result["reopen"], result["switching"], result["save"]
    print(
        f"reopen of {r['history_tokens']} tokens: first token {r['reopen_ttft_s'] * 1000:.0f} ms "
        f"(restore {r['restore_s'] * 1000:.0f} ms) vs {r['cold_ttft_s']:.1f} s cold: {r['speedup']:.0f}x; "
        f"evaluated {r['reopen_evaluated']} (the new message: {r['new_message_tokens']})"
    )
    print(f"switching 5x each way: evaluated {sw['evaluated']} for {sw['new_message_tokens']} new: {sw['ratio']:.2f}x")
    print(
        f"save: engine thread {sv['export_engine_thread_s'] * 1000:.0f} ms, file {sv['write_s'] * 1000:.0f} ms, "
        f"{sv['bytes'] / 1e6:.1f} MB"
    )
    append_result_row(
        "Instant reopen: KV snapshots against re-evaluation (`python bench/reopen.py`)",
        [
            "date",
            "machine",
            "history tokens",
            "first token reopened / cold",
            "speedup",
            "evaluated (new msg)",
            "switching evaluated / new",
            "save: engine thread / file / size",
        ],
        [
            result["date"],
            str(result["machine"].get("cpu", ""))[:40],
            str(r["history_tokens"]),
            f"{r['reopen_ttft_s'] * 1000:.0f} ms / {r['cold_ttft_s']:.1f} s",
            f"{r['speedup']:.0f}x",
            f"{r['reopen_evaluated']} ({r['new_message_tokens']})",
            f"{sw['evaluated']} / {sw['new_message_tokens']} ({sw['ratio']:.2f}x)",
            f"{sv['export_engine_thread_s'] * 1000:.0f} ms / {sv['write_s'] * 1000:.0f} ms"
            f" / {sv['bytes'] / 1e6:.1f} MB",
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
