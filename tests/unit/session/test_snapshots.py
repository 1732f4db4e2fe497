"""Issue 18: where chats' KV states are kept (session/snapshots.py) and their files (engine/snapshot.py).

No model here: the states are made-up bytes under a made-up key, which is all the store and
the file format see. The real engine's states are tested in tests/unit/engine/test_snapshot.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from app.engine.snapshot import (
    TEMP_SUFFIX,
    KVState,
    SnapshotDamaged,
    SnapshotKey,
    SnapshotMismatch,
    read_snapshot,
    write_snapshot,
)
from app.session.snapshots import STALE_TEMP_SECONDS, SnapshotStore, StateCache
from tests.conftest import DEADLINE, ROOT

KEY = SnapshotKey(
    model_id="1234:5678:" + "ab" * 32,
    n_ctx=4096,
    type_k="f16",
    type_v="f16",
    rope_freq_base=100000.0,
    rope_freq_scale=1.0,
    flash_attn="on",
    build="0.3.36+0123456789abcdef",
    seq_version=3,
)


def state(n_tokens: int, n_bytes: int, fill: int = 7, key: SnapshotKey = KEY) -> KVState:
    return KVState(key=key, tokens=list(range(1, n_tokens + 1)), data=bytes([fill]) * n_bytes)


def test_a_snapshot_reads_back_as_written(tmp_path: Path) -> None:
    s = state(100, 5000, fill=3)
    path = tmp_path / "1.kv"
    written = write_snapshot(path, s)
    assert written == path.stat().st_size
    back = read_snapshot(path, KEY, max_bytes=1 << 20)
    assert back.tokens == s.tokens and bytes(back.data) == s.data and back.key == KEY
    assert back.nbytes == 5000 + 400
    assert [p.name for p in tmp_path.iterdir()] == ["1.kv"]  # no temporary file left


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("model_id", "1:2:" + "cd" * 32, "another model file"),
        ("n_ctx", 2048, "another context size"),
        ("type_k", "q8_0", "another K cache type"),
        ("type_v", "q8_0", "another V cache type"),
        ("rope_freq_base", 10000.0, "RoPE frequency base"),
        ("rope_freq_scale", 0.5, "RoPE scale"),
        ("flash_attn", "off", "flash-attention"),
        ("build", "0.3.37+ffffffffffffffff", "another llama.cpp build"),
        ("seq_version", 4, "state format"),
    ],
)
def test_a_snapshot_for_anything_else_is_refused_saying_what(
    tmp_path: Path, field: str, value: object, words: str
) -> None:
    path = tmp_path / "1.kv"
    write_snapshot(path, state(10, 100))
    with pytest.raises(SnapshotMismatch, match=words) as info:
        read_snapshot(path, replace(KEY, **{field: value}), max_bytes=1 << 20)
    assert "\n" not in str(info.value)


def _header_rewritten(path: Path, **changes: object) -> None:
    """Rewrite the JSON header of a snapshot with `changes`, keeping the rest of the file."""
    import json
    import struct

    raw = path.read_bytes()
    magic, version, hlen = struct.unpack("<8sII", raw[:16])
    header = json.loads(raw[16 : 16 + hlen])
    header.update(changes)
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<8sII", magic, version, len(new)) + new + raw[16 + hlen :])


def damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(raw[: len(raw) - 10])
    elif how == "cut in the header":
        path.write_bytes(raw[:30])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flipped data":
        raw[-50] ^= 0x40
        path.write_bytes(raw)
    elif how == "flipped token":
        _header_rewritten(path)  # same header, so the token offset is known
        raw = bytearray(path.read_bytes())
        raw[len(raw) - 100 - 4 * 10] ^= 1
        path.write_bytes(raw)
    elif how == "bad magic":
        raw[0:8] = b"GGUF\x03\x00\x00\x00"
        path.write_bytes(raw)
    elif how == "header length past the end":
        raw[12:16] = (len(raw) * 2).to_bytes(4, "little")
        path.write_bytes(raw)
    elif how == "more tokens than the file":
        _header_rewritten(path, n_tokens=1000)
    elif how == "huge data length":
        _header_rewritten(path, data_len=1 << 40)
    elif how == "negative count":
        _header_rewritten(path, n_tokens=-1)
    elif how == "tokens over n_ctx":
        _header_rewritten(path, n_tokens=KEY.n_ctx + 1)
    elif how == "key not a key":
        _header_rewritten(path, key={"model_id": 5})
    elif how == "header not json":
        hlen = int.from_bytes(raw[12:16], "little")
        raw[16 : 16 + hlen] = b"{" * hlen
        path.write_bytes(raw)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "truncated",
        "cut in the header",
        "empty",
        "flipped data",
        "flipped token",
        "bad magic",
        "header length past the end",
        "more tokens than the file",
        "huge data length",
        "negative count",
        "tokens over n_ctx",
        "key not a key",
        "header not json",
    ],
)
def test_a_damaged_snapshot_is_refused_in_one_line(tmp_path: Path, how: str) -> None:
    path = tmp_path / "1.kv"
    write_snapshot(path, state(10, 100))
    damage(path, how)
    with pytest.raises(SnapshotDamaged) as info:
        read_snapshot(path, KEY, max_bytes=1 << 20)
    assert "\n" not in str(info.value)


def test_a_snapshot_over_max_bytes_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "1.kv"
    write_snapshot(path, state(10, 10_000))
    with pytest.raises(SnapshotDamaged, match="over the limit"):
        read_snapshot(path, KEY, max_bytes=5_000)


# -- the store ---------------------------------------------------------------------------


def _age(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def test_store_evicts_the_least_recently_used_past_its_limit(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "kv", limit_bytes=35_000)
    for chat_id in (1, 2, 3):
        store.save(chat_id, state(10, 10_000, fill=chat_id))
        _age(store.path(chat_id), 100 - chat_id)  # 1 oldest, 3 newest
    assert set(store.sizes()) == {1, 2, 3}
    got, note = store.load(1, KEY)  # touching 1 makes 2 the least recently used
    assert got is not None and note is None and bytes(got.data) == bytes([1]) * 10_000
    store.save(4, state(10, 10_000, fill=4))
    assert set(store.sizes()) == {1, 3, 4}
    assert store.total() == sum(store.sizes().values()) <= 35_000


def test_store_keeps_the_newest_and_never_saves_a_state_over_the_whole_limit(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, limit_bytes=25_000)
    store.save(1, state(10, 10_000))
    _age(store.path(1), 10)
    store.save(2, state(10, 20_000))  # the two do not fit: the older goes
    assert set(store.sizes()) == {2}
    assert store.save(2, state(10, 30_000)) == 0  # alone over the limit: not written, the old one gone
    assert store.sizes() == {}


def test_store_remove_and_missing(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, limit_bytes=1 << 20)
    assert store.load(5, KEY) == (None, None)
    store.save(5, state(3, 30))
    assert store.remove(5) is True
    assert store.remove(5) is False
    assert store.sizes() == {} and store.load(5, KEY) == (None, None)
    with pytest.raises(ValueError):
        store.path(-1)


def test_store_removes_a_mismatched_or_damaged_file_and_says_why(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, limit_bytes=1 << 20)
    store.save(1, state(3, 30))
    got, note = store.load(1, replace(KEY, n_ctx=2048))
    assert got is None and note is not None and "context size" in note and "chat 1" in note
    assert not store.path(1).exists()
    store.save(2, state(3, 30))
    damage(store.path(2), "flipped data")
    got, note = store.load(2, KEY)
    assert got is None and note is not None and "checksum" in note
    assert store.sizes() == {}


def test_store_ignores_files_that_are_not_snapshots(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, limit_bytes=1 << 20)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "abc.kv").write_text("x")
    (tmp_path / ".7.kv.123.tmp").write_bytes(b"x" * 100)
    (tmp_path / "7.kv").mkdir()
    assert store.sizes() == {}


_KILLED_WRITER = """
import sys
from app.engine.snapshot import KVState
from app.session.snapshots import SnapshotStore
from tests.unit.session.test_snapshots import KEY
store = SnapshotStore(sys.argv[1], limit_bytes=1 << 40)
data = bytes([9]) * int(sys.argv[2])
print("ready", flush=True)
while True:
    store.save(1, KVState(key=KEY, tokens=list(range(1, 2000)), data=data))
"""


def test_a_save_killed_midway_leaves_the_previous_snapshot(tmp_path: Path) -> None:
    """SIGKILL while a big snapshot is being written: the chat's file is the previous one,
    whole, and the half-written temporary file is never taken for a snapshot."""
    folder = tmp_path / "kv"
    store = SnapshotStore(folder, limit_bytes=1 << 40)
    old = state(50, 1000, fill=1)
    store.save(1, old)
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(folder), str(64 << 20)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:  # kill it while a temporary file is growing
            temps = [p for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX)]
            if any(p.stat().st_size > 1 << 20 for p in temps if p.exists()):
                break
            time.sleep(0.001)
        else:
            pytest.fail("the child never started writing")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    temps = [p for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert temps, "the kill came after the save finished: nothing was tested"
    assert store.sizes().keys() == {1}
    got, note = store.load(1, KEY)
    assert note is None and got is not None
    # The first whole save (old) or a later whole one (the child's), never a half one.
    assert (got.tokens, bytes(got.data)) in ((old.tokens, old.data), (list(range(1, 2000)), bytes([9]) * (64 << 20)))
    # The killed save's temporary file goes at the next save once it is stale.
    for p in temps:
        _age(p, STALE_TEMP_SECONDS + 10)
    store.save(2, state(3, 30))
    assert not [p for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX)]


# -- states in memory ----------------------------------------------------------------------


def test_state_cache_keeps_the_recently_used_within_its_byte_budget() -> None:
    cache = StateCache(budget_bytes=25_000)
    cache.put(1, state(0, 10_000, fill=1))
    cache.put(2, state(0, 10_000, fill=2))
    assert cache.get(1, KEY) is not None  # 1 is now the more recent
    cache.put(3, state(0, 10_000, fill=3))
    assert 2 not in cache and 1 in cache and 3 in cache
    assert cache.total() == 20_000
    cache.put(4, state(0, 30_000))  # bigger than the whole budget: not kept, nothing evicted
    assert 4 not in cache and cache.total() == 20_000
    cache.put(1, state(0, 20_000))  # replacing a chat's state counts its new size
    assert 1 in cache and 3 not in cache and cache.total() == 20_000


def test_state_cache_gives_a_state_only_for_its_key() -> None:
    cache = StateCache(budget_bytes=1 << 20)
    cache.put(1, state(5, 100))
    assert cache.get(1, replace(KEY, type_k="q8_0")) is None
    assert 1 not in cache  # useless under the new settings: dropped
    cache.put(1, state(5, 100))
    assert cache.get(1, None) is None
    cache.put(2, state(5, 100))
    cache.drop(2)
    assert cache.get(2, KEY) is None and cache.get(99, KEY) is None
