"""Issue 18: KVKeeper, the one place chats' KV caches are kept and put back, on real chat sessions
(the workspace's SQLite store, the bundled model through the engine, snapshot files on disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine.engine import Engine
from app.engine.options import SamplerSettings
from app.prompt.builder import FormatChoice
from app.session import kv_keeper
from app.session.chat import ChatSession, SnapshotUse, start_session
from app.session.kv_keeper import KVKeeper
from app.session.snapshots import SnapshotStore, StateCache
from app.session.workspace import Workspace

GREEDY = SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=8, seed=1)
FORMAT = FormatChoice("chatml", "asked for")


def long_chat(ws: Workspace, engine: Engine, salt: str, turns: int = 12) -> ChatSession:
    session = start_session(ws, None, sampler=GREEDY)
    for i in range(turns):
        session.store.add_message(session.chat_id, "user", f"{salt}: tell me about the harbour, part {i}.")
        session.store.add_message(session.chat_id, "assistant", f"The harbour, part {i}: boats, gulls and rope.")
    session.reload()
    session.attach(engine, FORMAT)
    return session


def turn(session: ChatSession, text: str) -> tuple[int, int, int]:
    """(tokens evaluated, the prompt's growth past the last prompt and its reply, tokens reused)."""
    before = session.last_built.tokens if session.last_built is not None else None
    generated = session.last_stats.generated_tokens if session.last_stats is not None else 0
    session.add_user(text)
    t = session.begin("reply")
    t.generation.result()
    session.finish(t)
    stats = t.generation.stats
    assert stats is not None and t.built.tokens is not None
    grown = len(t.built.tokens) - (len(before) + generated) if before is not None else len(t.built.tokens)
    return stats.prompt_evaluated, grown, stats.prompt_reused


@pytest.fixture
def keeper(ws: Workspace, engine: Engine, tmp_path: Path):
    k = KVKeeper(engine, SnapshotStore(tmp_path / "kv", 1 << 30), StateCache(512 << 20))
    yield k
    k.close()


def test_switching_between_two_chats_evaluates_only_what_is_new(ws: Workspace, engine: Engine, keeper) -> None:
    """Memory cache: chat A, chat B, A again, B again; each comeback evaluates its new turn only
    (the prompt's growth: the reply's end, the user's message in its format, the reply's opening)
    and the one token sampled last, which a generation never evaluates."""
    a, b = long_chat(ws, engine, "A"), long_chat(ws, engine, "B")
    turn(a, "First question for A?")
    keeper.keep(a)
    turn(b, "First question for B?")
    for i in range(2):
        keeper.keep(b)
        restored = keeper.restore(a)
        assert restored.source == "memory" and restored.tokens > 300
        assert a.restored == SnapshotUse("memory", restored.tokens)
        evaluated, grown, _ = turn(a, f"Question {i} for A?")
        assert evaluated <= grown + 1, (evaluated, grown)
        assert a.restored is None  # the turn started from it and said so
        keeper.keep(a)
        assert keeper.restore(b).source == "memory"
        evaluated, grown, _ = turn(b, f"Question {i} for B?")
        assert evaluated <= grown + 1, (evaluated, grown)
    last = b.messages[-1].swipes[-1].provenance
    assert last["kv_snapshot"]["source"] == "memory" and last["kv_snapshot"]["tokens"] > 300


def test_a_chat_reopened_from_disk_on_a_new_engine_answers_as_if_never_closed(
    ws: Workspace, model_path: Path, tmp_path: Path
) -> None:
    """Save, close the engine, load another, restore: the next turn evaluates only what is new
    and the greedy reply is the one the live cache gives."""
    from app.engine.options import LoadOptions

    options = LoadOptions(ctx=2048, threads=2, batch=256)
    store = SnapshotStore(tmp_path / "kv", 1 << 30)
    first = Engine()
    first.load(model_path, options)
    try:
        chat = long_chat(ws, first, "C")
        turn(chat, "What do the gulls eat?")
        k = KVKeeper(first, store, None)
        kept = k.keep(chat)
        assert kept is not None and kept.written is not None and kept.written.result() > 0
        k.close()
        live = chat.begin("reply", None)  # the reference: the same prompt on the live cache
        live_text = live.generation.result()
    finally:
        first.close()
    second = Engine()
    second.load(model_path, options)
    try:
        chat.attach(second, FORMAT)
        k = KVKeeper(second, store, None)
        restored = k.restore(chat)
        assert restored.source == "disk" and restored.tokens > 300
        t = chat.begin("reply", None)
        assert t.generation.result() == live_text
        assert t.generation.stats is not None and t.generation.stats.prompt_evaluated <= 30
        assert t.context is not None and t.context.restored == restored.tokens
        k.close()
    finally:
        second.close()


def test_a_chat_is_never_kept_from_a_cache_another_chat_holds(ws: Workspace, engine: Engine, keeper) -> None:
    """The app keeps the chat left while the next is opened: whichever runs first, the chat left
    never saves (nor trims) the other's cache."""
    a, b = long_chat(ws, engine, "D"), long_chat(ws, engine, "E")
    turn(a, "Hello A")
    turn(b, "Hello B")  # the cache is B's now
    cached = engine.cached_tokens()
    assert keeper.keep(a) is None
    assert engine.cached_tokens() == cached
    assert a.chat_id not in keeper.memory and not keeper.disk.path(a.chat_id).exists()


def test_keep_soon_and_restore_soon_run_in_the_order_asked(ws: Workspace, engine: Engine, keeper) -> None:
    a, b = long_chat(ws, engine, "F"), long_chat(ws, engine, "G")
    turn(b, "Hello B")
    keeper.keep(b)
    turn(a, "Hello A")
    kept = keeper.keep_soon(a)  # the chat left
    restored = keeper.restore_soon(b)  # the chat opened, asked for right after
    assert kept.result() is not None and a.chat_id in keeper.memory
    assert restored.result().source == "memory"
    assert engine.cached_tokens() == keeper.memory.get(b.chat_id, engine.snapshot_key()).tokens


def test_the_window_policy_saves_no_tail_the_next_prompt_drops(ws: Workspace, engine: Engine, tmp_path: Path) -> None:
    """A reply edited by hand (or cut by a stop string) leaves its old text in the cache; "window"
    keeps only what the next prompt starts with, "all" the cache as it is."""
    chat = long_chat(ws, engine, "H")
    turn(chat, "Say something.")
    whole = engine.cached_tokens()
    chat.edit(len(chat.messages) - 1, "Something else entirely, written by hand.")
    fit = chat.next_prompt()
    assert fit is not None
    all_keeper = KVKeeper(engine, None, StateCache(1 << 30), policy="all")
    assert all_keeper.keep(chat).tokens == len(whole)
    all_keeper.close()
    window = KVKeeper(engine, None, StateCache(1 << 30))
    kept = window.keep(chat)
    assert kept is not None and kept.tokens < len(whole)
    assert engine.cached_tokens() == fit[: kept.tokens]
    window.close()
    with pytest.raises(ValueError):
        KVKeeper(engine, None, None, policy="some")


def test_a_big_save_is_said_once_and_one_over_the_disk_limit_stays_in_memory(
    ws: Workspace, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat = long_chat(ws, engine, "I")
    turn(chat, "Hello")
    monkeypatch.setattr(kv_keeper, "BIG_SAVE_BYTES", 1 << 20)
    k = KVKeeper(engine, SnapshotStore(tmp_path / "kv", 1 << 30), StateCache(1 << 30))
    first = k.keep(chat)
    assert first is not None and first.notice is not None
    assert first.notice.startswith("saving this chat's KV cache to disk: ") and "tokens" in first.notice
    again = k.keep(chat)
    assert again is not None and again.notice is None  # the same size step: not said after every reply
    k.close()
    small = KVKeeper(engine, SnapshotStore(tmp_path / "kv", 1 << 20), StateCache(1 << 30))
    over = small.keep(chat)
    assert over is not None and over.written is None
    assert over.notice is not None and "over the snapshots' disk limit" in over.notice
    assert "disk_limit_mb" in over.notice
    assert not small.disk.path(chat.chat_id).exists()  # the older, smaller one went too
    assert chat.chat_id in small.memory
    small.close()


def test_close_writes_what_is_queued(ws: Workspace, engine: Engine, tmp_path: Path) -> None:
    chat = long_chat(ws, engine, "J")
    turn(chat, "Hello")
    k = KVKeeper(engine, SnapshotStore(tmp_path / "kv", 1 << 30), None)
    k.keep_soon(chat)
    k.close()
    assert k.disk.sizes().get(chat.chat_id, 0) > 0


def test_a_chat_opened_again_keeps_its_live_cache(ws: Workspace, engine: Engine, keeper) -> None:
    """Opening the chat that is open already: its cache is its own and newer than any kept copy."""
    chat = long_chat(ws, engine, "K")
    turn(chat, "Hello")
    keeper.keep(chat)
    turn(chat, "Again")
    live = engine.cached_tokens()
    assert keeper.restore(chat).tokens == 0
    assert engine.cached_tokens() == live
