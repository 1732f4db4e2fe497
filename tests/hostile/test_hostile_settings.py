"""Hostile and broken settings files (issue 13): typed by the defaults, warned not fatal, never lost.

A wrong value costs its key a warning (naming the file, the key and what was expected)
and the built-in default; a file that is not TOML at all is refused in one line and
never written over; a save changes only the keys this run changed, in the file as it
is at that moment, so an edit made while Cattery runs survives.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import CatteryError, DiskError, SettingsError
from app.paths import Paths
from app.session.workspace import Workspace
from app.settings import MAX_SETTINGS_FILE, Settings, apply_changes
from app.settings_schema import EXPLICIT, MODEL_FILE, SAMPLER, check_settings, rule_from_default
from tests.conftest import DEADLINE, ROOT, run_cattery
from tests.fs_limits import in_private_tmpfs, need_private_mounts, with_file_size_limit
from tests.hostile import cases_chats as cases
from tests.hostile.bounds import assert_one_line_failure, assert_refused, byte_edits, mutate_bytes, run_bounded


def _write(tmp_path: Path, body: str | bytes) -> Path:
    path = tmp_path / "config" / "settings.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


def _paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "config", tmp_path / "data", tmp_path / "cache", tmp_path / "logs")


def use_everything(path: Path) -> list[str]:
    """Load the file and call every consumer of a settings value the way the app does;
    then save and load again. Returns the warnings. Only a CatteryError may escape."""
    from app.tui.keys import keymap_from_settings

    s = Settings.load(path)
    warnings = list(s.warnings)
    ws = Workspace(_paths(path.parent.parent), s)
    opts = ws.load_options()
    opts.validate()
    ws.load_options(ws.saved_load_settings(Path("cat.gguf"))).validate()
    assert isinstance(ws.default_ctx, int)
    assert all(isinstance(d, Path) for d in ws.model_dirs())
    ws.sampler().validate()
    ws.recipe(None)
    ws.default_character()
    assert isinstance(ws.store.path, Path)
    ws.close()
    keymap_from_settings(dict(s.section("keys")), str(path))
    max(1, int(s.get("ui", "shown_messages", 60)))
    str(s.get("ui", "images", "auto"))
    bool(s.get("ui", "cursor_blink", True))
    for key in ("system", "format", "card", "char_name"):
        assert isinstance(s.get("chat", key, ""), str)
    assert isinstance(s.get("persona", "name", "User"), str)
    s.set("model_settings", "saved-by-the-test.gguf", {"ctx": 1024})
    s.save()
    again = Settings.load(path)
    assert again.data == s.data
    return warnings


# -- the schema ----------------------------------------------------------------------------------


def test_every_default_passes_its_own_rule() -> None:
    s = Settings(Path("/nonexistent/settings.toml"))
    for section, table in s.defaults.items():
        assert isinstance(table, dict), section
        for key, value in table.items():
            assert rule_from_default(section, key, value).check(value) == value, (section, key)
    assert check_settings(s.defaults, s.defaults, "defaults")[1] == []
    for section, key in EXPLICIT:
        assert key in s.defaults[section], f"a rule for [{section}] {key}, which the defaults do not have"


BAD_VALUES: list[tuple[str, str, str, str]] = [
    # (section, key, TOML value, what the warning says was expected)
    ("model", "ctx", '"big"', "a whole number from 1 to"),
    ("model", "ctx", "0", "a whole number from 1 to"),
    ("model", "ctx", "-4096", "a whole number from 1 to"),
    ("model", "ctx", "4096.5", "a whole number"),
    ("model", "ctx", "1e400", "a whole number"),
    ("model", "ctx", "nan", "a whole number"),
    ("model", "ctx", "1000000000000000000000000000000", "a whole number"),
    ("model", "ctx", "true", "a whole number"),
    ("model", "gpu_layers", '"lots"', '"auto", "all" or a number'),
    ("model", "gpu_layers", "-7", '"auto", "all" or a number'),
    ("model", "gpu_layers", "[1]", '"auto", "all" or a number'),
    ("model", "threads", "-1", "a whole number from 0"),
    ("model", "batch", "0", "a whole number from 1"),
    ("model", "flash_attn", '"maybe"', '"auto" or "on" or "off"'),
    ("model", "cache_type_k", '"f99"', '"f16"'),
    ("model", "mmap", '"yes"', "true or false"),
    ("model", "dirs", '"/etc"', "a list of paths"),
    ("model", "dirs", "[1, 2]", "a list of paths"),
    ("model", "dirs", '["ok", "bad\\u0000"]', "a list of paths"),
    ("model", "default", "5", "text"),
    ("model", "last_used", '"a\\u0000b"', "text"),
    ("chat", "system", '["x"]', "text"),
    ("chat", "preset", '"../../../etc/passwd"', '"default"'),
    ("chat", "preset", '"nonexistent"', '"default"'),
    ("chat", "max_tokens", "0", "a whole number from 1"),
    ("chat", "lorebooks", '"book.json"', "a list of paths"),
    ("chat", "pin_examples", '"yes"', "true or false"),
    ("chat", "char_name", '"two\\nlines"', "one line of text"),
    ("lore", "placement", '"middle"', '"card" or "end"'),
    ("persona", "name", '["a", "b"]', "one line of text"),
    ("persona", "name", "5", "one line of text"),
    ("persona", "name", '"' + "n" * 300 + '"', "at most 256"),
    ("ui", "images", "1", '"auto" or "on" or "off"'),
    ("ui", "shown_messages", "-1", "a whole number from 1"),
    ("ui", "theme", "{a = 1}", "one line of text"),
    ("ui", "cursor_blink", "0", "true or false"),
    ("chats", "busy_timeout", "-1", "a number from 0 to 600"),
    ("chats", "busy_timeout", "inf", "a number from 0 to 600"),
    ("sampler", "temperature", '"hot"', "a number"),
    ("sampler", "top_p", "0", "a number above 0"),
    ("sampler", "top_p", "nan", "a number above 0"),
    ("sampler", "seed", "-1", "a whole number from 0"),
    ("sampler", "mirostat", "3", "a whole number from 0 to 2"),
    ("sampler", "ban_eos", "1", "true or false"),
    ("keys", '"chat.regenerate"', "5", "a key name"),
]


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"), BAD_VALUES, ids=[f"{b[0]}.{b[1]}={b[2][:20]}" for b in BAD_VALUES]
)
def test_a_bad_value_is_a_warning_and_the_default(
    section: str, key: str, value: str, expected: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, f"[{section}]\n{key} = {value}\n")
    out = run_bounded(use_everything, path, keep_value=True)
    assert out.kind == "ok", out
    warnings = out.value
    assert len(warnings) == 1, warnings
    shown_key = key.strip('"')
    assert warnings[0].startswith(f"{path}: [{section}] {shown_key}: "), warnings[0]
    assert expected in warnings[0] and "\n" not in warnings[0], warnings[0]
    s = Settings.load(path)
    defaults = Settings(path).data
    assert s.get(section, shown_key) == defaults[section].get(shown_key), "the default is used"
    assert s.user[section][shown_key] is not None  # the user's text is kept in the file for them to fix


def test_honest_spellings_are_accepted(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[model]\nctx = 8192\ngpu_layers = "ALL"\nflash_attn = true\ncache_type_v = "Q8_0"\ndirs = ["~/m"]\n'
        '[sampler]\ntemperature = 1\ntop_p = 0.9\nseed = 42\n[chat]\npreset = "min-p"\n'
        '[model_settings."a.gguf"]\nctx = 2048\ngpu_layers = 10\nrope_scale = 2\nformat = "chatml"\n',
    )
    s = Settings.load(path)
    assert s.warnings == []
    assert s.get("model", "gpu_layers") == "all" and s.get("model", "flash_attn") == "on"
    assert s.get("model", "cache_type_v") == "q8_0" and s.get("sampler", "temperature") == 1.0
    assert s.section("model_settings")["a.gguf"] == {
        "ctx": 2048,
        "gpu_layers": 10,
        "rope_scale": 2.0,
        "format": "chatml",
    }
    assert use_everything(path) == []


def test_dirs_as_a_string_scans_nothing(tmp_path: Path) -> None:
    """The issue's case: `dirs = "/etc"` walked `/`, `e`, `t`, `c`."""
    path = _write(tmp_path, '[model]\ndirs = "/etc"\n')
    ws = Workspace(_paths(tmp_path), Settings.load(path))
    assert ws.model_dirs() == [tmp_path / "data" / "models"]
    assert "[model] dirs" in ws.settings.warnings[0]


def test_everything_wrong_at_once(tmp_path: Path) -> None:
    """Every key of the defaults given a value of the wrong type: a warning each, and every consumer works."""
    s = Settings(Path("x"))
    wrong = {section: {key: {"oops": [1]} for key in table} for section, table in s.defaults.items()}
    wrong["sampler"] = {key: "x" for key in SAMPLER}
    wrong["model_settings"] = {"m.gguf": {key: {"t": 1} for key in MODEL_FILE}, "n.gguf": "x"}
    wrong["keys"] = {"chat.regenerate": 3.5}
    wrong["unknown"] = {"a": 1}
    wrong["model"]["extra_key"] = 1
    path = _write(tmp_path, tomli_w.dumps(wrong))
    out = run_bounded(use_everything, path, keep_value=True)
    assert out.kind == "ok", out
    assert len(out.value) == 21 and out.value[-1].endswith("more problems like these"), out.value


def test_unknown_keys_are_kept_and_warned(tmp_path: Path) -> None:
    path = _write(tmp_path, "[future]\nflag = true\n[model]\nnew_knob = 3\n")
    s = Settings.load(path)
    assert [w.removeprefix(f"{path}: ") for w in s.warnings] == [
        "[future]: unknown section (kept, but this Cattery does not use it)",
        "[model] new_knob: unknown key (kept, but this Cattery does not use it)",
    ]
    s.set("chat", "system", "Meow.")
    s.save()
    again = Settings.load(path)
    assert again.user["future"] == {"flag": True} and again.user["model"]["new_knob"] == 3


def test_warnings_stay_few_and_short(tmp_path: Path) -> None:
    long_key = "k" * 100_000
    path = _write(tmp_path, f'[model]\n"{long_key}" = 1\n' + "".join(f"[s{i}]\n" for i in range(100)))
    s = Settings.load(path)
    assert len(s.warnings) == 21 and all(len(w) < 400 for w in s.warnings)


# -- files that cannot be read at all --------------------------------------------------------------

UNREADABLE: list[tuple[str, bytes, str]] = [
    ("not UTF-8", b'[chat]\nsystem = "caf\xe9"\n', "not UTF-8"),
    ("UTF-16", "[chat]\nsystem = 'x'\n".encode("utf-16"), "not UTF-8"),
    ("not TOML", b"model = [\n", "not valid TOML"),
    ("duplicate key", b"[model]\nctx = 1\nctx = 2\n", "not valid TOML"),
    ("duplicate table", b"[model]\n[model]\n", "not valid TOML"),
    ("NUL byte", b"[model]\x00\n", "not valid TOML"),
    ("deep", b"a = " + b"[" * 100_000 + b"]" * 100_000, "nested"),
    ("too big", b"# " + b"x" * MAX_SETTINGS_FILE + b"\n", "more than a settings file"),
    ("5000-digit integer", b"[model]\nctx = " + b"9" * 5000 + b"\n", "not valid TOML"),
]


@pytest.mark.parametrize(("label", "body", "match"), UNREADABLE, ids=[u[0] for u in UNREADABLE])
def test_an_unreadable_file_is_refused_in_one_line(label: str, body: bytes, match: str, tmp_path: Path) -> None:
    path = _write(tmp_path, body)
    out = assert_refused(Settings.load, path, match=match, what=label)
    assert out.detail.startswith(str(path)) and out.error_type == "SettingsError", out


def test_not_a_regular_file(tmp_path: Path) -> None:
    folder = tmp_path / "config" / "settings.toml"
    folder.mkdir(parents=True)
    assert_refused(Settings.load, folder, match="a folder")
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert_refused(Settings.load, fifo, match="not a regular file")


def test_a_bom_is_not_a_mistake(tmp_path: Path) -> None:
    path = _write(tmp_path, b'\xef\xbb\xbf[chat]\nsystem = "Meow."\n')
    assert Settings.load(path).get("chat", "system") == "Meow."


# -- saving: never over a broken file, never over someone else's edit -----------------------------


def test_save_never_overwrites_a_file_broken_while_running(tmp_path: Path) -> None:
    path = _write(tmp_path, '[chat]\nsystem = "Meow."\n')
    ws = Workspace(_paths(tmp_path), Settings.load(path))
    broken = b'[chat]\nsystem = "half an edi'
    path.write_bytes(broken)
    ws.settings.set("model", "last_used", "/m.gguf")
    problem = ws.save_settings()
    assert problem is not None and problem.startswith(f"{path}: not valid TOML") and "left as it is" in problem
    assert path.read_bytes() == broken
    with pytest.raises(SettingsError, match="left as it is"):
        ws.settings.save()


def test_an_edit_made_while_running_survives_a_save(tmp_path: Path) -> None:
    """The issue's case: a chat started before the user edited settings.toml wrote its stale copy back."""
    path = _write(tmp_path, '[chat]\nsystem = "Old."\npreset = "min-p"\n[ui]\ntheme = "nord"\n')
    ws = Workspace(_paths(tmp_path), Settings.load(path))
    time.sleep(0.01)
    path.write_text('[chat]\nsystem = "New, by hand."\n[persona]\nname = "Ren"\n[ui]\ntheme = "nord"\n')
    assert ws.remember_model(Path("/models/cat.gguf")) is None
    saved = Settings.load(path)
    assert saved.get("chat", "system") == "New, by hand."  # the user's edit
    assert saved.get("persona", "name") == "Ren"
    assert "preset" not in saved.user["chat"]  # removed by hand: stays removed
    assert saved.get("model", "last_used") == "/models/cat.gguf"  # the app's change
    assert ws.settings.get("persona", "name") == "Ren"  # and the running app now sees the edit


def test_a_table_replaced_like_the_settings_screen_does(tmp_path: Path) -> None:
    path = _write(tmp_path, "[sampler]\ntemperature = 0.5\ntop_k = 10\n")
    s = Settings.load(path)
    path.write_text('[sampler]\ntemperature = 0.5\ntop_k = 10\n[ui]\ntheme = "dracula"\n')
    s.user["sampler"] = {"temperature": 0.9}  # what app/tui/screens/settings.py does
    s.data["sampler"] = {"temperature": 0.9}
    s.save()
    saved = Settings.load(path).user
    assert saved == {"sampler": {"temperature": 0.9}, "ui": {"theme": "dracula"}}


def test_apply_changes() -> None:
    current = {"a": {"x": 1, "y": 2}, "b": 3, "c": {"k": 1}}
    before = {"a": {"x": 1, "y": 1}, "b": 3, "c": {"k": 1}, "gone": 1}
    after = {"a": {"x": 5, "y": 1}, "b": 3, "d": 4}
    assert apply_changes(current, before, after) == {"a": {"x": 5, "y": 2}, "b": 3, "d": 4}
    # A table this run made, which another run made too meanwhile: both keep their keys.
    assert apply_changes({"t": {"theirs": 1}}, {}, {"t": {"mine": 2}}) == {"t": {"theirs": 1, "mine": 2}}


SAVER = """
import sys, time
from pathlib import Path
from app.settings import Settings
s = Settings.load(Path(sys.argv[1]))
start = float(sys.argv[2])
while time.time() < start:
    pass
s.set("persona", "description", "x")
s.set("model_settings", sys.argv[3], {"ctx": 2048})
s.save()
"""


def test_concurrent_saves_lose_nothing(tmp_path: Path) -> None:
    path = _write(tmp_path, '[chat]\nsystem = "Meow."\n')
    start = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SAVER, str(path), str(start), f"m{i}.gguf"], cwd=ROOT, stderr=subprocess.PIPE
        )
        for i in range(5)
    ]
    for p in procs:
        _, err = p.communicate(timeout=DEADLINE)
        assert p.returncode == 0, err[-1000:]
    saved = Settings.load(path)
    assert sorted(saved.section("model_settings")) == [f"m{i}.gguf" for i in range(5)]
    assert saved.get("chat", "system") == "Meow."


def _save_under_file_limit(path: Path) -> None:
    s = Settings.load(path)
    s.set("chat", "system", "x" * 5000)
    with_file_size_limit(s.save, 1000)


def test_save_on_a_full_disk_by_file_size_limit(tmp_path: Path) -> None:
    body = b'[chat]\nsystem = "Meow."\n'
    path = _write(tmp_path, body)
    out = assert_refused(_save_under_file_limit, path, match=str(path.parent))
    assert out.error_type == "DiskError", out
    assert path.read_bytes() == body
    assert [p.name for p in path.parent.iterdir()] == ["settings.toml"]  # no temporary file left


def test_save_on_a_full_or_read_only_filesystem(tmp_path: Path) -> None:
    """A real full tmpfs (ENOSPC) and a read-only one (EROFS): one line each, the file untouched."""
    need_private_mounts()
    config = tmp_path / "config"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from app.settings import Settings\n"
        "from app.session.workspace import Workspace\n"
        "from app.paths import get_paths\n"
        "ws = Workspace()\n"
        "ws.settings.set('chat', 'system', 'x' * 4000)\n"
        "print(ws.save_settings())\n"
        "print(repr(Path(sys.argv[1]).read_text()))\n"
    )
    report = tmp_path / "report"
    script = f"""
printf '[chat]\\nsystem = "before"\\n' > {config}/settings.toml
fill_up
$PY -c {subprocess.list2cmdline([code])} {config}/settings.toml > {report}.full 2>&1
free_up
readonly_now
$PY -c {subprocess.list2cmdline([code])} {config}/settings.toml > {report}.ro 2>&1
ls -a {config} > {report}.ls
"""
    proc = in_private_tmpfs(config, script, size_kib=256, env={"CATTERY_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    for what, says in (("full", "No space left"), ("ro", "Read-only file system")):
        lines = (tmp_path / f"report.{what}").read_text().splitlines()
        assert len(lines) == 2 and lines[0].startswith(f"cannot save the settings in {config}"), lines
        assert says in lines[0] and lines[1] == repr('[chat]\nsystem = "before"\n'), lines
    assert (tmp_path / "report.ls").read_text().split() == [".", "..", "settings.toml"]


# -- the command line ------------------------------------------------------------------------------


def test_cli_shows_warnings_and_goes_on(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _write(home, '[model]\nctx = "big"\ndirs = "/etc"\n[persona]\nname = ["a"]\n')
    proc = run_cattery("chats", "list", home=home)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3 and all("settings.toml: [" in w for w in warnings), proc.stderr
    assert "[model] ctx" in warnings[0] and "using the default (4096)" in warnings[0]


@pytest.mark.parametrize("body", [b"\xff\xfe[model]", b"[model\n", b'[chat]\nsystem = """'])
def test_cli_refuses_an_unreadable_settings_file(body: bytes, tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = _write(home, body)
    for args in (("chats", "list"), ("chats", "import", str(cases.st_file(tmp_path, [cases.st_line(0)])))):
        line = assert_one_line_failure(run_cattery(*args, home=home), match="settings.toml")
        assert str(path) in line
    assert path.read_bytes() == body
    assert not (home / "data").exists()  # nothing written anywhere


def test_cli_with_a_huge_settings_file_is_bounded(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _write(home, b"".join(b"k%d = %d\n" % (i, i) for i in range(60_000)))
    t0 = time.monotonic()
    proc = run_cattery("chats", "list", home=home)
    assert proc.returncode == 0 and time.monotonic() - t0 < 30, proc.stderr[-500:]
    assert len(proc.stderr.splitlines()) <= 22


# -- mutation: hypothesis on a real settings file --------------------------------------------------

FULL = (ROOT / "assets" / "settings.default.toml").read_bytes() + (
    b'\n[model_settings."cat.gguf"]\nctx = 8192\ngpu_layers = 20\nrope_scale = 2.0\nformat = "chatml"\n'
)
KEYS = [(section, key) for section, table in Settings(Path("x")).defaults.items() for key in table]
KEYS += [("sampler", key) for key in SAMPLER] + [("keys", "chat.regenerate")]

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)  # TOML files are UTF-8
TOML_VALUES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),
    TEXT,
    st.sampled_from(["auto", "all", "-1", "/etc", "../x", "\x00", "\x1b[2J", "a" * 5000, "ALL", "On"]),
    st.lists(st.one_of(TEXT, st.integers()), max_size=4),
    st.dictionaries(TEXT, st.integers(), max_size=3),
)


def _settings_from(folder: Path, data: bytes) -> list[str]:
    path = _write(folder, data)
    return use_everything(path)


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(ops=byte_edits())
def test_mutated_bytes(ops: list[tuple[int, int, int]], tmp_path_factory: Any) -> None:
    out = run_bounded(_settings_from, tmp_path_factory.mktemp("smut"), mutate_bytes(FULL, ops))
    assert out.bounded, out


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), TOML_VALUES), min_size=1, max_size=5))
def test_mutated_values(changes: list[tuple[tuple[str, str], Any]], tmp_path_factory: Any) -> None:
    import tomllib

    doc = tomllib.loads(FULL.decode())
    for (section, key), value in changes:
        doc.setdefault(section, {})[key] = value
    out = run_bounded(_settings_from, tmp_path_factory.mktemp("vmut"), tomli_w.dumps(doc).encode(), keep_value=True)
    assert out.kind == "ok", out  # a value is never fatal: a warning and the default
    assert all(w.startswith(str(tmp_path_factory.getbasetemp())) for w in out.value), out.value


def test_errors_are_cattery_errors() -> None:
    assert issubclass(SettingsError, CatteryError) and issubclass(DiskError, CatteryError)
