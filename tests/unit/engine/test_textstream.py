"""TextStream: UTF-8 across token boundaries and stop strings that never leak."""

from __future__ import annotations

from app.engine.textstream import TextStream


def stream_all(chunks: list[bytes], stop: list[str]) -> tuple[list[str], TextStream]:
    ts = TextStream(stop)
    out = [ts.feed(c) for c in chunks]
    out.append(ts.finish())
    return [o for o in out if o], ts


def test_multibyte_characters_split_across_chunks() -> None:
    data = "猫 🐱 ok".encode()
    chunks = [data[i : i + 1] for i in range(len(data))]
    pieces, _ = stream_all(chunks, [])
    assert "".join(pieces) == "猫 🐱 ok"
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_split_across_chunks_is_not_leaked() -> None:
    pieces, ts = stream_all([b"Hello ", b"wor", b"ld\nUs", b"er: more"], ["\nUser:"])
    assert "".join(pieces) == "Hello world"
    assert ts.stopped_by == "\nUser:"
    assert not any("\n" in p for p in pieces)


def test_partial_stop_that_does_not_complete_is_released() -> None:
    pieces, ts = stream_all([b"a\nU", b"nicorn"], ["\nUser:"])
    assert "".join(pieces) == "a\nUnicorn"
    assert ts.stopped_by is None


def test_held_tail_is_flushed_at_the_end() -> None:
    pieces, ts = stream_all([b"done\nUse"], ["\nUser:"])
    assert pieces == ["done", "\nUse"]
    assert ts.stopped_by is None


def test_earliest_of_several_stops_wins() -> None:
    pieces, ts = stream_all([b"x END y STOP"], ["STOP", "END"])
    assert "".join(pieces) == "x "
    assert ts.stopped_by == "END"


def test_invalid_bytes_become_replacement_characters() -> None:
    pieces, _ = stream_all([b"ok \xff\xfe end"], [])
    assert "".join(pieces) == "ok \ufffd\ufffd end"


def test_nothing_after_a_stop() -> None:
    ts = TextStream(["#"])
    assert ts.feed(b"a#b") == "a"
    assert ts.feed(b"more") == ""
    assert ts.finish() == ""
