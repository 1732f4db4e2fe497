"""The pieces every door shares (issue 13): bounded parsers, terminal text, the CLI's last resort."""

from __future__ import annotations

import argparse
import errno
import io
import json
from pathlib import Path
from typing import Any

import pytest

from app import cli
from app.errors import CatteryError, InputError
from app.terminal import VisibleStream, rewrite_line, strip_controls, visible
from app.untrusted import (
    MAX_DEPTH,
    check_structure,
    parse_json,
    parse_toml,
    parse_yaml,
    read_bounded,
    read_text_bounded,
    require,
)
from tests.conftest import run_cattery
from tests.hostile.bounds import assert_bounded, assert_refused, run_bounded

# -- JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 900, 5000, 200_000])
def test_deep_json_is_refused_in_one_line(depth: int) -> None:
    for text in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        out = assert_refused(parse_json, text, "card.json", match="nested")
        assert out.detail.startswith("card.json:")


def test_json_at_the_depth_limit_is_accepted() -> None:
    text = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_json(text, "x") is not None


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}', "[1e400]", '{"p": -1e999}'])
def test_non_finite_numbers_are_refused(text: str) -> None:
    with pytest.raises(InputError, match=r"x\.json"):
        parse_json(text, "x.json")


def test_non_finite_numbers_allowed_when_asked() -> None:
    assert parse_json("[NaN]", "x", allow_nonfinite=True)[0] != 0


@pytest.mark.parametrize("text", [b"\xff\xfe{", "{'a': 1}", '{"a": 1', "1" * 5000, "", "\ud800"])
def test_malformed_json_is_one_line(text: Any) -> None:
    out = assert_refused(parse_json, text, "chat.jsonl line 3")
    assert out.detail.startswith("chat.jsonl line 3:")


def test_check_structure_walks_without_recursion() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InputError, match="nested"):
        check_structure(deep, "x")
    with pytest.raises(InputError, match="not finite"):
        check_structure({"a": [{"b": float("nan")}]}, "x")


# -- TOML and YAML -------------------------------------------------------------------------


def test_toml_bounds() -> None:
    assert parse_toml('a = 1\n[b]\nc = "d"\n', "s.toml") == {"a": 1, "b": {"c": "d"}}
    assert_refused(parse_toml, "a = " + "[" * 5000 + "]" * 5000, "s.toml", match="s.toml")
    assert_refused(parse_toml, "a = nan", "s.toml", match="not finite")
    assert_refused(parse_toml, b"a = '\xff'", "s.toml", match="UTF-8")
    assert_refused(parse_toml, "a = = 1", "s.toml", match="TOML")
    assert_refused(parse_toml, "a = " + "9" * 5000, "s.toml", match="s.toml")


def test_yaml_alias_bomb_is_refused_at_once() -> None:
    # The classic "billion laughs": 300-odd bytes that expand to gigabytes.
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    bomb = "\n".join(lines)
    assert len(bomb) < 400
    out = assert_refused(parse_yaml, bomb, "card.yaml", match="alias", seconds=2, memory_mb=64)
    assert out.seconds < 1


def test_yaml_without_aliases_is_read() -> None:
    assert parse_yaml("name: Mochi\ntags: [cat, cute]\n", "c.yaml") == {"name": "Mochi", "tags": ["cat", "cute"]}
    assert parse_yaml("a: &x 1\n", "c.yaml") == {"a": 1}  # an anchor alone expands nothing


@pytest.mark.parametrize(
    "text", ["[" * 20_000 + "]" * 20_000, "a: !!python/object:os.system x", "a: [", ":\n  - :\n -", "a: .nan"]
)
def test_hostile_yaml_is_one_line(text: str) -> None:
    assert_refused(parse_yaml, text, "c.yaml", match="c.yaml")


# -- files and types -------------------------------------------------------------------------


def test_read_bounded(tmp_path: Path) -> None:
    small = tmp_path / "small.json"
    small.write_text('{"a": 1}')
    assert read_bounded(small, 100) == b'{"a": 1}'
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 1000)
    with pytest.raises(InputError, match=r"big\.json"):
        read_bounded(big, 100, "card")
    with pytest.raises(InputError, match="folder"):
        read_bounded(tmp_path, 100)
    with pytest.raises(InputError, match="no such file"):
        read_bounded(tmp_path / "missing", 100)
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9")
    with pytest.raises(InputError, match="UTF-8"):
        read_text_bounded(tmp_path / "latin.txt", 100)


def test_require_names_the_key() -> None:
    assert require(3, int, "s.toml", "ctx") == 3
    with pytest.raises(InputError, match=r"s.toml: ctx should be an int, not str 'big'"):
        require("big", int, "s.toml", "ctx")
    with pytest.raises(InputError, match="not bool"):
        require(True, int, "s.toml", "ctx")
    with pytest.raises(InputError, match="a str or list"):
        require(None, (str, list), "s.toml", "persona.name")


# -- text for the terminal --------------------------------------------------------------------

HOSTILE_TEXT = "Mochi\x1b]0;pwned\x07\x1b[2J\r\x9b31m\u202eevil\x00\x7f"


def test_visible_shows_every_control() -> None:
    shown = visible(HOSTILE_TEXT + "\nline two\tand a tab")
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown and "\x9b" not in shown
    assert "\u202e" not in shown and "\x00" not in shown and "\x7f" not in shown
    assert "\\u001b]0;pwned\\u0007" in shown and "\\u202e" in shown
    assert "\nline two\tand a tab" in shown
    # The escapes are valid JSON escapes: a JSON document stays a JSON document.
    assert json.loads(visible(json.dumps({"n": "\x9b\u202e"}, ensure_ascii=False))) == {"n": "\x9b\u202e"}


def test_strip_controls_for_the_app() -> None:
    assert strip_controls(HOSTILE_TEXT) == "Mochi]0;pwned[2J31mevil"
    assert strip_controls("a\nb\tc") == "a\nb\tc"


def test_visible_stream_and_progress_line() -> None:
    raw = io.StringIO()
    stream = VisibleStream(raw)  # type: ignore[arg-type]
    print("name:", "\x1b[31mred", file=stream)  # type: ignore[arg-type]
    rewrite_line(stream, "50% \x1b[2J")
    assert raw.getvalue() == "name: \\u001b[31mred\n\r50% \\u001b[2J"


def test_the_cli_shows_outside_text_escaped(tmp_path: Path) -> None:
    """`cattery prompt` prints text given from outside with its escapes visible, never obeyed."""
    proc = run_cattery(
        "prompt", "--format", "chatml", "--card", "none", "--system", "Evil\x1b]0;pwned\x07", home=tmp_path / "h"
    )
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "Evil\\u001b]0;pwned\\u0007" in proc.stdout


# -- the CLI's last resort -------------------------------------------------------------------


def _run_func(func: Any, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli._run(argparse.Namespace(func=func))
    return code, capsys.readouterr().err


def test_a_bug_is_one_line_and_a_log_for_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CATTERY_HOME", str(tmp_path))
    monkeypatch.delenv("CATTERY_DEBUG")

    def boom(_: argparse.Namespace) -> int:
        raise KeyError("a bug")

    code, err = _run_func(boom, capsys)
    assert code == 70
    assert err.count("\n") == 1 and err.startswith("cattery: internal error: KeyError")
    assert "Traceback" not in err
    log = tmp_path / "logs" / "cattery.log"
    assert str(log) in err
    assert "Traceback" in log.read_text() and "a bug" in log.read_text()


def test_a_bug_raises_for_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATTERY_DEBUG", "1")

    def boom(_: argparse.Namespace) -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        cli._run(argparse.Namespace(func=boom))


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/chats/x.tmp"), "/data/chats: No space left"),
        (OSError(errno.EROFS, "Read-only file system", "/ro/cards/a.json"), "/ro/cards: Read-only file system"),
        (PermissionError(errno.EACCES, "Permission denied", "/etc/cattery"), "Permission denied"),
    ],
)
def test_disk_errors_are_one_line(err: OSError, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    def fail(_: argparse.Namespace) -> int:
        raise err

    code, out = _run_func(fail, capsys)
    assert code == 2 and out.count("\n") == 1 and expected in out and "Traceback" not in out


def test_memory_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def fail(_: argparse.Namespace) -> int:
        raise MemoryError

    code, out = _run_func(fail, capsys)
    assert code == 2 and out.startswith("cattery: error: out of memory") and out.count("\n") == 1


def test_error_text_from_outside_stays_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def fail(_: argparse.Namespace) -> int:
        raise CatteryError("evil.json: name 'a\nb\x1b[2J' is too long")

    main_streams = cli.sys.stdout, cli.sys.stderr
    code, out = _run_func(fail, capsys)
    assert (cli.sys.stdout, cli.sys.stderr) == main_streams
    assert code == 2 and out.count("\n") == 1


def test_the_bounds_helper_tells_the_outcomes() -> None:
    """tests/hostile/bounds.py itself: each kind of ending is told apart (a helper that cannot fail is no check)."""

    def slow() -> None:
        import time

        time.sleep(10)

    def greedy() -> bytes:
        return b"x" * (600 << 20)

    def buggy() -> None:
        raise ValueError("x")

    assert run_bounded(slow, seconds=0.5).kind == "timeout"
    assert run_bounded(greedy).kind == "memory"
    assert run_bounded(buggy).kind == "bug"
    assert run_bounded(lambda: 1 + 1).kind == "ok"
    assert assert_bounded(lambda: (_ for _ in ()).throw(InputError("x: bad"))).kind == "refused"


def test_lone_surrogates_are_mended_not_kept() -> None:
    """Half an emoji (JavaScript cuts strings by UTF-16 units) becomes U+FFFD; a whole one stays."""
    data = parse_json('{"na\\ud800me": ["a\\udc00b", {"t": "\\ud83d\\ude00 ok \\ud83d"}], "s": "\\ud800"}', "x")
    assert data == {"na\ufffdme": ["a\ufffdb", {"t": "\U0001f600 ok \ufffd"}], "s": "\ufffd"}
    json.dumps(data).encode("utf-8")  # encodable everywhere now
    assert parse_json('"\\udfff"', "x") == "\ufffd"


def test_read_bounded_refuses_pipes_and_devices_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "card.json"
    os.mkfifo(fifo)
    out = assert_refused(read_bounded, fifo, 100, "card", seconds=2, match="not a regular file")
    assert out.seconds < 1
    assert_refused(read_bounded, Path("/dev/zero"), 100, "card", seconds=2, match="not a regular file")


def test_toml_byte_order_mark_and_nonfinite_when_allowed() -> None:
    assert parse_toml(b"\xef\xbb\xbfa = 1", "s.toml") == {"a": 1}
    assert parse_toml("a = inf", "s.toml", allow_nonfinite=True)["a"] == float("inf")


def test_a_model_folder_is_walked_within_bounds(tmp_path: Path, model_path: Path, monkeypatch) -> None:
    """`dirs = ["/"]` or a folder of a million files must not make resolving a model crawl the disk."""
    import shutil

    from app.hub import library

    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    shutil.copy(model_path, deep / "found.gguf")
    (tmp_path / "loop").symlink_to(tmp_path)  # a link back up is not followed
    assert [e.name for e in library.library_entries([tmp_path]) if e.source != "bundled"] == ["found"]
    monkeypatch.setattr(library, "MAX_WALK_DEPTH", 1)
    assert [e for e in library.library_entries([tmp_path]) if e.source != "bundled"] == []
    monkeypatch.setattr(library, "MAX_WALK_DEPTH", 6)
    out = run_bounded(library.library_entries, [Path("/")], seconds=10)
    assert out.kind == "ok", out


@pytest.mark.parametrize("ref", ["library:../../etc", "bundled:../../x", "library:", "library:a/b", "bundled:a\\b"])
def test_a_stored_character_reference_never_leads_outside(ref: str, tmp_path: Path) -> None:
    from app.cards.library import CardLibrary
    from app.session.characters import resolve_character

    (tmp_path / "etc").mkdir()
    with pytest.raises(CatteryError, match="not a character reference"):
        resolve_character(ref, CardLibrary(tmp_path / "cards"))


def test_a_long_error_is_cut_to_one_readable_line(capsys: pytest.CaptureFixture[str]) -> None:
    def fail(_: argparse.Namespace) -> int:
        raise CatteryError("x" * 10_000 + ": no such card")

    code, out = _run_func(fail, capsys)
    assert code == 2 and out.count("\n") == 1 and len(out) < 700 and out.rstrip().endswith("…")


def test_json_cost_is_counted_before_parsing() -> None:
    """`{},` is three bytes but a whole dict: the cost bound refuses a small file of them at once."""
    text = "[" + "{}," * 3_000_000 + "{}]"
    out = assert_refused(parse_json, text, "x.json", match="values", seconds=2, memory_mb=64)
    assert out.seconds < 0.5
    assert parse_json("[" + "{}," * 1000 + "{}]", "x.json", max_cost=3000)
