"""Issue 18: a chat's KV cache saved, the engine closed, a new one loaded, the cache restored.

Real llama.cpp on the bundled model. One module-scoped run evaluates a ~1.5k-token prompt,
saves its state to a file and records the greedy continuation; every test then works on
that file with engines loaded afresh, as a reopened app would.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from app.engine.engine import Engine
from app.engine.options import LoadOptions, SamplerSettings
from app.engine.snapshot import (
    KVState,
    SnapshotDamaged,
    SnapshotKey,
    SnapshotMismatch,
    read_snapshot,
    write_snapshot,
)
from tests.unit.session.test_snapshots import damage

OPTIONS = {"ctx": 2048, "threads": 2, "batch": 256, "warmup": False}
PROMPT = "".join(
    f"Entry {i}: the {('grey', 'ginger', 'black', 'white')[i % 4]} cat number {i} slept on mat {i * 7 % 13} "
    f"and dreamed of {('fish', 'mice', 'string', 'sunlight', 'boxes')[i % 5]}.\n"
    for i in range(70)
)
NEW = "\nQuestion: which cat slept on mat 5? Answer:"
MAX_BYTES = 1 << 30


def greedy(max_tokens: int = 24) -> SamplerSettings:
    return SamplerSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens, seed=1)


@dataclass
class Saved:
    path: Path
    key: SnapshotKey
    prompt: list[int]
    new: list[int]
    expected: str
    state: KVState


def load(model_path: Path, **changes: object) -> Engine:
    eng = Engine()
    eng.load(model_path, LoadOptions(**{**OPTIONS, **changes}))  # type: ignore[arg-type]
    return eng


def still_works(eng: Engine) -> None:
    """The engine answers after a refused snapshot: a short generation from whatever is cached."""
    gen = eng.generate(eng.tokenize("Hello, cat."), greedy(4))
    gen.result()
    assert gen.stats is not None and gen.stats.generated_tokens > 0


@pytest.fixture(scope="module")
def saved(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Saved:
    path = tmp_path_factory.mktemp("kv") / "chat.kv"
    eng = load(model_path)
    try:
        prompt = eng.tokenize(PROMPT)
        new = eng.segment_tokenize(NEW)
        assert 1400 <= len(prompt) <= 1900
        eng.generate(prompt, greedy(1)).result()  # one token sampled, none decoded: the cache is the prompt
        assert eng.cached_tokens() == prompt
        state = eng.export_state()
        assert state.tokens == prompt and state.nbytes > 4 * len(prompt)
        assert write_snapshot(path, state) == path.stat().st_size
        expected = eng.generate(prompt + new, greedy()).result()
        key = eng.snapshot_key()
        assert key is not None
    finally:
        eng.close()
    return Saved(path, key, prompt, new, expected, state)


@pytest.fixture(scope="module")
def fresh(model_path: Path) -> Iterator[Engine]:
    """An engine loaded after the first was closed, with the same model and options."""
    eng = load(model_path)
    yield eng
    eng.close()


def test_a_restored_chat_evaluates_only_the_new_tokens_and_answers_the_same(saved: Saved, fresh: Engine) -> None:
    assert fresh.snapshot_key() == saved.key
    state = read_snapshot(saved.path, saved.key, max_bytes=MAX_BYTES)
    assert fresh.import_state(state) == len(saved.prompt)
    assert fresh.cached_tokens() == saved.prompt
    plan = fresh.plan(saved.prompt + saved.new)
    assert plan.reused == len(saved.prompt) and plan.to_evaluate == len(saved.new)
    gen = fresh.generate(saved.prompt + saved.new, greedy())
    assert gen.result() == saved.expected
    assert gen.stats is not None and gen.stats.prompt_evaluated == len(saved.new)


def test_a_restored_chat_whose_window_slid_is_shifted_not_evaluated(saved: Saved, fresh: Engine) -> None:
    """The pinned block kept, older turns dropped from the window: the restored cache is
    shifted as a live one would be, and only the new message is evaluated."""
    fresh.import_state(saved.state)
    prompt = saved.prompt[:100] + saved.prompt[600:] + saved.new
    plan = fresh.plan(prompt)
    assert plan.shifted == len(saved.prompt) - 600 and plan.to_evaluate == len(saved.new)
    gen = fresh.generate(prompt, greedy(8))
    assert gen.result()
    assert gen.stats is not None and gen.stats.prompt_evaluated == len(saved.new)


def test_a_state_exported_again_is_the_same_bytes(saved: Saved, fresh: Engine) -> None:
    fresh.import_state(saved.state)
    again = fresh.export_state()
    assert again.tokens == saved.prompt and bytes(again.data) == bytes(saved.state.data)


def test_export_fitted_to_the_next_prompt_holds_only_what_it_reuses(saved: Saved, fresh: Engine) -> None:
    """keep = "window": a tail the next prompt does not have is dropped, not saved."""
    fresh.import_state(saved.state)
    part = fresh.export_state(fit=saved.prompt[:300] + saved.new)
    assert part.tokens == saved.prompt[:300] and len(part.data) < len(saved.state.data)
    assert fresh.cached_tokens() == saved.prompt[:300]
    fresh.reset()
    assert fresh.import_state(part) == 300
    assert fresh.plan(saved.prompt).reused == 300
    assert fresh.state_size() == len(part.data)
    empty = fresh.export_state(fit=saved.new)
    assert empty.tokens == [] and fresh.cached_tokens() == []
    assert fresh.import_state(empty) == 0 and fresh.cached_tokens() == []


def test_export_fitted_to_a_window_that_slid_is_shifted_first(saved: Saved, fresh: Engine) -> None:
    """The window slid past old turns: the state holds the pinned block and the turns still in
    the window, moved left as the next turn would move them, and that turn evaluates only the new."""
    fresh.import_state(saved.state)
    window = saved.prompt[:100] + saved.prompt[600:]
    state = fresh.export_state(fit=window + saved.new)
    assert state.tokens == window and len(state.data) < len(saved.state.data)
    fresh.reset()
    fresh.import_state(state)
    gen = fresh.generate(window + saved.new, greedy(4))
    gen.result()
    assert gen.stats is not None and gen.stats.prompt_evaluated == len(saved.new)
    assert gen.stats.prompt_shifted == 0


def test_export_for_another_owner_or_after_the_cache_changed_keeps_nothing(saved: Saved, fresh: Engine) -> None:
    """A chat kept after another chat's state was put back (or a turn ran) must not take, nor
    trim, a cache that is no longer its own."""
    fresh.import_state(saved.state, owner=1)
    mine = fresh.export_state(owner=1)
    assert mine.tokens == saved.prompt
    assert fresh.export_state(fit=saved.new, owner=2).tokens == []
    assert fresh.cached_tokens() == saved.prompt  # untouched
    serial = fresh.kv_serial()
    fresh.import_state(saved.state, owner=1)  # the cache changed since `serial` was read
    assert fresh.export_state(fit=saved.new, owner=1, serial=serial).tokens == []
    assert fresh.cached_tokens() == saved.prompt
    gen = fresh.generate(saved.prompt + saved.new, greedy(2), owner=3)
    gen.result()
    assert fresh.export_state(owner=1).tokens == []
    assert fresh.export_state(owner=3).tokens[: len(saved.prompt)] == saved.prompt


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"ctx": 1024}, "another context size"),
        ({"cache_type_k": "q8_0"}, "another K cache type"),
    ],
)
def test_a_snapshot_for_other_settings_is_refused(
    saved: Saved, model_path: Path, changes: dict[str, object], words: str
) -> None:
    eng = load(model_path, **changes)
    try:
        key = eng.snapshot_key()
        assert key is not None and key != saved.key
        with pytest.raises(SnapshotMismatch, match=words):
            read_snapshot(saved.path, key, max_bytes=MAX_BYTES)
        eng.generate(eng.tokenize("Cats"), greedy(2)).result()
        before = eng.cached_tokens()
        with pytest.raises(SnapshotMismatch, match=words):
            eng.import_state(saved.state)
        assert eng.cached_tokens() == before  # a refused state leaves the cache as it was
        still_works(eng)
    finally:
        eng.close()


def test_a_snapshot_of_another_model_file_is_refused(saved: Saved, model_path: Path, tmp_path: Path) -> None:
    """A copy of the model with one byte of its header changed and the same size and mtime."""
    copy = tmp_path / model_path.name
    shutil.copyfile(model_path, copy)
    with copy.open("r+b") as f:
        head = f.read(1 << 20)
        at = head.index(b"general.name") + len("general.name") + 4 + 8  # the name's first letter
        f.seek(at)
        f.write(b"T" if head[at : at + 1] != b"T" else b"S")
    st = model_path.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    eng = load(copy)
    try:
        key = eng.snapshot_key()
        assert key is not None
        assert replace(key, model_id=saved.key.model_id) == saved.key  # only the file differs
        with pytest.raises(SnapshotMismatch, match="another model file"):
            read_snapshot(saved.path, key, max_bytes=MAX_BYTES)
        with pytest.raises(SnapshotMismatch, match="another model file"):
            eng.import_state(saved.state)
        still_works(eng)
    finally:
        eng.close()


@pytest.mark.parametrize(
    "how", ["truncated", "flipped data", "bad magic", "more tokens than the file", "huge data length"]
)
def test_a_damaged_snapshot_file_is_refused(saved: Saved, fresh: Engine, tmp_path: Path, how: str) -> None:
    path = tmp_path / "chat.kv"
    shutil.copyfile(saved.path, path)
    damage(path, how)
    with pytest.raises(SnapshotDamaged):
        read_snapshot(path, saved.key, max_bytes=MAX_BYTES)
    still_works(fresh)


def _crafted(saved: Saved, **changes: object) -> KVState:
    return replace(saved.state, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "case",
    ["garbage state", "half a state", "fewer tokens than the state", "more tokens than the state"],
)
def test_a_crafted_state_with_a_good_checksum_is_refused_and_the_cache_cleared(
    saved: Saved, fresh: Engine, tmp_path: Path, case: str
) -> None:
    """A file anyone could write: a valid header and checksum over bytes llama.cpp must not trust."""
    data = bytes(saved.state.data)
    tokens = saved.prompt
    if case == "garbage state":
        state = _crafted(saved, data=bytes((i * 37) & 0xFF for i in range(len(data))))
    elif case == "half a state":
        state = _crafted(saved, data=data[: len(data) // 2])
    elif case == "fewer tokens than the state":
        state = _crafted(saved, tokens=tokens[:-5])
    else:
        state = _crafted(saved, tokens=tokens + tokens[:5])
    path = tmp_path / "crafted.kv"
    write_snapshot(path, state)
    loaded = read_snapshot(path, saved.key, max_bytes=MAX_BYTES)
    with pytest.raises(SnapshotDamaged):
        fresh.import_state(loaded)
    assert fresh.cached_tokens() == []
    still_works(fresh)


def test_tokens_outside_the_vocabulary_or_the_context_are_refused(saved: Saved, fresh: Engine) -> None:
    with pytest.raises(SnapshotDamaged, match="token"):
        fresh.import_state(_crafted(saved, tokens=[*saved.prompt[:-1], 10**7]))
    with pytest.raises(SnapshotMismatch, match="context"):
        fresh.import_state(_crafted(saved, tokens=saved.prompt * 2))
    still_works(fresh)
