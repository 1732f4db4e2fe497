"""Instant reopen (issue 18): a chat's KV cache kept on disk and in memory, against evaluating it again.

Everything runs through the path the line chat and the app use: chats in a workspace's SQLite
store, `ChatSession` building each prompt (format, pinned block, window), `KVKeeper` keeping and
restoring, on the bundled model at a 4096-token context.

1. Reopen: a chat whose window holds ~3.9k tokens gets a reply (so its cache is full), is kept,
   and the engine is closed; a fresh engine is loaded (as a restart does), the chat restored from
   disk and the next reply asked for: its time to first token (the restore included) against the
   same prompt on a cold cache (the reply regenerated after `Engine.reset`), and the tokens it
   evaluated against the prompt's growth since the last reply.
2. Switching: two long chats (~1.6k tokens each; one cache holds one chat) alternate 5 times
   each way, each turn a new message; each comes back from the keeper's memory cache. Tokens
   evaluated against the new messages' tokens, where a turn's new tokens are the prompt's growth
   past the previous prompt and the reply the model wrote: the reply's end marker, the user's
   message in its format, the reply's opening. (One more token is evaluated per turn: the last
   one a generation samples is never evaluated into the cache, by llama.cpp's design.)
3. Saving the ~3.9k-token state: how long the engine thread is held (the copy), the file, the size;
   and a turn sent the moment a save starts (as Enter right after a reply): its first token against
   a turn sent with no save running, and whether the file was still being written by then (the
   turn waits for the copy, never for the file).
4. Key latency during saves: the real app, headless, on that chat; a save is started every
   0.5 s (the copy on the engine thread, the file on the keeper's writer) while a key is pressed
   in the message box every 20 ms, timed as bench/tui.py times keys: until the box holds it.
5. Mismatches: the chat's snapshot met by an engine with another context size, another K cache
   type, another model file (the bundled file copied with one byte of its last MiB changed), and
   the file truncated; each through `KVKeeper.restore` as a reopen meets it, 3 times: detected
   (a notice, nothing restored, the file removed) every time, never used.

    python bench/reopen.py

Writes bench/out/reopen.json and a row in bench/RESULTS.md. Targets: time to first token >= 20x
better than re-evaluating; tokens evaluated on reopen = the new message only; switching evaluates
<= 1.1x the new messages' tokens; every mismatch detected; keys < 50 ms during a save.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import append_result_row, machine, median, now, write_json

CTX = 4096
TOPICS = [
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


def fill(ws: Any, engine: Any, choice: Any, sampler: Any, tokens: int, salt: str) -> Any:
    """A stored chat whose next prompt is about `tokens` long, attached to the engine."""
    from app.session.chat import start_session

    session = start_session(ws, None, sampler=sampler)
    session.attach(engine, choice)
    i = 0
    while True:
        preview = session.preview()
        if preview is not None and preview.used >= tokens:
            return session
        topic = TOPICS[i % len(TOPICS)]
        session.store.add_message(session.chat_id, "user", f"{salt} Tell me about {topic}, part {i}.")
        session.store.add_message(
            session.chat_id, "assistant", f"Here is what I know of {topic}: it is quiet, old and kind, part {i}."
        )
        session.reload()
        i += 1


class Turns:
    """Runs turns of chats and counts, per turn, tokens evaluated against the prompt's growth."""

    def __init__(self) -> None:
        self.last: dict[int, tuple[int, int]] = {}  # chat id → (its last prompt's tokens, its reply's tokens)

    def run(self, session: Any, text: str | None, kind: str = "reply") -> tuple[Any, int]:
        """(the generation's stats, the prompt's growth past the last prompt and its reply)."""
        if text is not None:
            session.add_user(text)
        t = session.begin(kind)
        t.generation.result()
        session.finish(t)
        stats = t.generation.stats
        size = len(t.built.tokens or [])
        before = self.last.get(session.chat_id)
        grown = size - sum(before) if before is not None else size
        self.last[session.chat_id] = (size, stats.generated_tokens)
        return stats, grown


def mismatches(ws: Any, plan: Any, chat: Any, choice: Any, state: Any, rounds: int = 3) -> dict[str, Any]:
    """Each wrong snapshot, `rounds` times: (detected, used) counts and the notice seen."""
    import dataclasses
    import shutil

    from app.engine.engine import Engine
    from app.session.kv_keeper import KVKeeper

    other_model = Path(tempfile.mkdtemp(prefix="cattery-other-")) / plan.path.name
    shutil.copyfile(plan.path, other_model)
    with open(other_model, "r+b") as f:  # one byte of the last tensor's data: another model to its identity
        f.seek(-4096, os.SEEK_END)
        byte = f.read(1)
        f.seek(-4096, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x01]))
    cases = {
        "other ctx": (plan.path, {"ctx": CTX // 2}),
        "other KV type": (plan.path, {"cache_type_k": "q8_0"}),
        "other model": (other_model, {}),
        "truncated": (plan.path, {}),
    }
    out: dict[str, Any] = {}
    for name, (model, changes) in cases.items():
        engine = Engine()
        engine.load(model, dataclasses.replace(plan.options, **changes))
        chat.attach(engine, choice)
        keeper = KVKeeper(engine, ws.snapshots, None)
        detected = used = 0
        notice = ""
        for _ in range(rounds):
            ws.snapshots.save(chat.chat_id, state)  # the chat's good snapshot, as its last save left it
            if name == "truncated":
                path = ws.snapshots.path(chat.chat_id)
                with open(path, "r+b") as f:
                    f.truncate(path.stat().st_size // 2)
            r = keeper.restore(chat)
            used += r.tokens > 0
            detected += bool(r.note) and r.tokens == 0 and not ws.snapshots.path(chat.chat_id).exists()
            notice = r.note or notice
        keeper.close()
        engine.close()
        out[name] = {"rounds": rounds, "detected": detected, "used": used, "notice": notice}
    shutil.rmtree(other_model.parent, ignore_errors=True)
    return out


def first_token_after_send(session: Any, text: str, saving: Any = None) -> tuple[float, bool]:
    """(seconds from sending `text`, as the app's Enter does, to the reply's first piece; whether
    the file of `saving`, a keep just started, was still being written at that moment)."""
    t0 = time.perf_counter()
    session.add_user(text)
    t = session.begin("reply")
    first, still_writing = None, False
    for _piece in t.generation:
        if first is None:
            first = time.perf_counter() - t0
            if saving is not None and saving.done():
                kept = saving.result()
                still_writing = bool(kept and kept.written and not kept.written.done())
    session.finish(t)
    return (first if first is not None else time.perf_counter() - t0), still_writing


async def keys_during_saves(ws: Any, engine: Any, session: Any, saves: int) -> tuple[list[float], int]:
    """Key latencies (s) in the real app's message box while `saves` saves of `session` run."""
    from textual import events

    from app.session.launch import Launch
    from app.tui.app import CatteryApp
    from app.tui.widgets.chat_input import ChatInput

    ws.store.set_state("last_chat", str(session.chat_id))
    app = CatteryApp(ws, Launch(load_model=False), engine=engine)
    keys: list[float] = []
    written = 0
    async with app.run_test(size=(110, 34)) as pilot:
        while app.session is None or not app.session.ready:
            await pilot.pause(0.05)
        await pilot.pause(1.0)  # the restore of the chat opened
        box = app.get_screen_stack("chat")[0].query_one(ChatInput)
        box.focus()
        for _ in range(saves):
            kept_future = app.keep_chat(app.session)
            assert kept_future is not None
            started = time.perf_counter()
            while True:
                kept = kept_future.result() if kept_future.done() else None
                busy = not kept_future.done() or (kept is not None and kept.written and not kept.written.done())
                if not busy and time.perf_counter() - started > 0.5:
                    break
                await asyncio.sleep(0.02)
                before = box.text
                t = time.perf_counter()
                app.post_message(events.Key("x", "x"))  # as the terminal driver delivers a key
                while box.text == before:
                    await asyncio.sleep(0.001)
                if busy:
                    keys.append(time.perf_counter() - t)
            if kept is not None and kept.written is not None:
                written += kept.written.result()
        box.text = ""
    return keys, written


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="cattery-reopen-"))
    os.environ["CATTERY_HOME"] = str(home)
    from app.engine.engine import Engine
    from app.engine.options import SamplerSettings
    from app.session.kv_keeper import KVKeeper
    from app.session.snapshots import StateCache
    from app.session.workspace import Workspace

    ws = Workspace()
    plan = ws.model_load(None, {"ctx": CTX, "threads": 2})
    sampler = SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=8, seed=1)
    turns = Turns()

    # 1. Reopen from disk on a freshly loaded engine, against the same prompt on a cold cache.
    engine = Engine()
    engine.load(plan.path, plan.options)
    choice = ws.chat_format(plan.path, engine.info, plan.format)
    chat = fill(ws, engine, choice, sampler, CTX - 200, "A")
    turns.run(chat, "And the harbour?")
    keeper = KVKeeper(engine, ws.snapshots, None)
    t0 = time.perf_counter()
    kept = keeper.keep(chat)
    keep_s = time.perf_counter() - t0  # the copy on the engine thread (the file is the writer's)
    assert kept is not None and kept.written is not None
    t0 = time.perf_counter()
    size = kept.written.result()
    write_s = time.perf_counter() - t0
    keeper.close()
    good, _ = ws.snapshots.load(chat.chat_id, engine.snapshot_key())  # for the mismatch cases
    assert good is not None
    engine.close()

    engine = Engine()
    engine.load(plan.path, plan.options)
    chat.attach(engine, choice)
    keeper = KVKeeper(engine, ws.snapshots, StateCache(1 << 30))
    t0 = time.perf_counter()
    restored = keeper.restore(chat)
    restore_s = time.perf_counter() - t0
    warm, grown = turns.run(chat, "And the lighthouse?")
    reopen_ttft = restore_s + warm.time_to_first_token
    engine.reset()
    cold, _ = turns.run(chat, None, "regenerate")  # the same prompt, nothing cached
    window_tokens = warm.prompt_tokens

    # 3b. A turn sent the moment a save of the chat starts, against one sent with no save running.
    idle, during, writing = [], [], 0
    for i in range(3):
        done = keeper.keep(chat)
        if done is not None and done.written is not None:
            done.written.result()
        idle.append(first_token_after_send(chat, f"Once more, {i}?")[0])
        seconds, still_writing = first_token_after_send(chat, f"And again, {i}?", keeper.keep_soon(chat))
        during.append(seconds)
        writing += still_writing

    # 2. Switching between two long chats through the keeper's memory cache.
    chats = [fill(ws, engine, choice, sampler, 1600, salt) for salt in "BC"]
    for c in chats:
        turns.run(c, "Hello again.")  # each evaluated once, as when first opened
        keeper.keep(c)
    evaluated = new_total = 0
    per_turn = []
    for i in range(10):
        c = chats[i % 2]
        keeper.restore(c)
        stats, new = turns.run(c, f"Question {i}: what else do you know?")
        evaluated += stats.prompt_evaluated
        new_total += new
        per_turn.append((stats.prompt_evaluated, new))
        keeper.keep(c)
    keeper.close()

    # 4. Keys during saves of the ~3.9k-token chat, in the app.
    keys, key_written = asyncio.run(keys_during_saves(ws, engine, chat, saves=5))
    engine.close()

    # 5. Snapshots that do not match, or are damaged.
    wrong = mismatches(ws, plan, chat, choice, good)
    ws.close()

    result = {
        "date": now(),
        "machine": machine(),
        "model": plan.path.name,
        "ctx": CTX,
        "reopen": {
            "window_tokens": window_tokens,
            "restored_tokens": restored.tokens,
            "restored_from": restored.source,
            "restore_s": restore_s,
            "reopen_ttft_s": reopen_ttft,
            "cold_ttft_s": cold.time_to_first_token,
            "cold_evaluated": cold.prompt_evaluated,
            "reopen_evaluated": warm.prompt_evaluated,
            "new_tokens": grown,
            "speedup": cold.time_to_first_token / reopen_ttft if reopen_ttft else 0.0,
        },
        "switching": {
            "evaluated": evaluated,
            "new_message_tokens": new_total,
            "ratio": evaluated / new_total if new_total else 0.0,
            "per_turn_evaluated_new": per_turn,
        },
        "save": {"engine_thread_s": keep_s, "write_s": write_s, "bytes": size, "tokens": kept.tokens},
        "turn_during_save": {
            "first_token_idle_s": idle,
            "first_token_during_save_s": during,
            "file_still_being_written_at_first_token": writing,
            "extra_wait_s": median(during) - median(idle),
        },
        "keys_during_save": {
            "pressed": len(keys),
            "median_ms": median(keys) * 1000 if keys else None,
            "max_ms": max(keys) * 1000 if keys else None,
            "saves": 5,
            "bytes_written": key_written,
        },
        "mismatches": wrong,
        "targets": {"speedup": 20, "switching_ratio": 1.1, "key_ms": 50},
    }
    write_json("reopen", result)
    r, sw, sv, k = result["reopen"], result["switching"], result["save"], result["keys_during_save"]
    print(
        f"reopen of a {r['window_tokens']}-token window: first token {r['reopen_ttft_s'] * 1000:.0f} ms "
        f"(restore {r['restore_s'] * 1000:.0f} ms) vs {r['cold_ttft_s']:.1f} s cold: {r['speedup']:.0f}x; "
        f"evaluated {r['reopen_evaluated']} (new tokens: {r['new_tokens']}; cold evaluated {r['cold_evaluated']})"
    )
    print(f"switching 5x each way: evaluated {sw['evaluated']} for {sw['new_message_tokens']} new: {sw['ratio']:.3f}x")
    print(
        f"save of {sv['tokens']} tokens: engine thread {sv['engine_thread_s'] * 1000:.0f} ms, "
        f"file {sv['write_s'] * 1000:.0f} ms, {sv['bytes'] / 1e6:.1f} MB"
    )
    td = result["turn_during_save"]
    print(
        f"a turn sent as a save starts: first token {median(during) * 1000:.0f} ms vs {median(idle) * 1000:.0f} ms "
        f"with no save (+{td['extra_wait_s'] * 1000:.0f} ms); the file still being written at the first token "
        f"{writing} of {len(during)} times"
    )
    print(
        f"keys during {k['saves']} saves: {k['pressed']} pressed, median {k['median_ms']:.1f} ms, "
        f"max {k['max_ms']:.1f} ms"
    )
    for name, m in wrong.items():
        print(f"mismatch {name}: detected {m['detected']}/{m['rounds']}, used {m['used']}: {m['notice']}")
    detected = sum(m["detected"] for m in wrong.values())
    rounds = sum(m["rounds"] for m in wrong.values())
    used = sum(m["used"] for m in wrong.values())
    append_result_row(
        "Instant reopen: KV snapshots against re-evaluation (`python bench/reopen.py`)",
        [
            "date",
            "machine",
            "window tokens",
            "first token reopened / cold",
            "speedup",
            "evaluated (new)",
            "switching evaluated / new",
            "save: engine thread / file / size",
            "first token of a turn sent as a save starts / with none",
            "keys during saves: median / max",
            "mismatches detected / used",
        ],
        [
            result["date"],
            str(result["machine"].get("cpu", ""))[:40],
            str(r["window_tokens"]),
            f"{r['reopen_ttft_s'] * 1000:.0f} ms / {r['cold_ttft_s']:.1f} s",
            f"{r['speedup']:.0f}x",
            f"{r['reopen_evaluated']} ({r['new_tokens']})",
            f"{sw['evaluated']} / {sw['new_message_tokens']} ({sw['ratio']:.3f}x)",
            f"{sv['engine_thread_s'] * 1000:.0f} ms / {sv['write_s'] * 1000:.0f} ms / {sv['bytes'] / 1e6:.1f} MB",
            f"{median(during) * 1000:.0f} / {median(idle) * 1000:.0f} ms",
            f"{k['median_ms']:.1f} / {k['max_ms']:.1f} ms",
            f"{detected}/{rounds} / {used}",
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
