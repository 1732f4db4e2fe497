"""A hub that lies (issue 13, the HUB door): names, sizes, digests, bodies and JSON answers
from the hub, and refs typed on the command line.

Every case runs the real code (the real huggingface_hub connection, the real cache writes)
against the loopback test hub taught to lie (tests/hub_server.py), inside tests.hostile.bounds's
bounds: accepted or refused in one line of Cattery's own error, within 5 s and 256 MB. After
each, the folder around the Hugging Face cache is walked: nothing may have appeared outside
the cache, and every link in the cache must lead inside it. Hypothesis mutates each of the
door's formats (a listing, a search answer, a download body, a remote GGUF header) from a real
valid one.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf  # noqa: F401 - imported once here, not again in every forked case (the header reader's)
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app.engine.metadata
import app.hub.download
import app.hub.remote  # noqa: F401
from app.hub.names import parse_ref, path_problem, revision_problem
from tests.conftest import run_cattery
from tests.hostile.bounds import (
    Outcome,
    assert_bounded,
    assert_one_line_failure,
    assert_refused,
    byte_edits,
    mutate_bytes,
    run_bounded,
)
from tests.hostile.cases_hub import (
    SMALL,
    WORST_CASES,
    download_ref,
    gguf_header,
    gguf_repo,
    lying_hub,
    small_gguf_bytes,
)
from tests.hub_server import HubServer

FILE = "tiny.Q4_0.gguf"
MUTATIONS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_names = itertools.count()


@pytest.fixture(scope="module")
def lying() -> Iterator[HubServer]:
    with lying_hub() as server:
        yield server


def cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def new_repo_id(kind: str) -> str:
    return f"hostile/{kind}-{next(_names)}"


def everything(root: Path) -> set[Path]:
    found: set[Path] = set()
    for folder, dirs, files in os.walk(root):
        found.update(Path(folder) / name for name in dirs + files)
    return found


class Contained:
    """What a case wrote: nothing outside the HF cache, and no link it made that leads out."""

    def __init__(self) -> None:
        self.cache = cache()
        self.root = self.cache.parent
        self.before = everything(self.root)

    def check(self) -> None:
        new = everything(self.root) - self.before
        outside = sorted(str(p) for p in new if not p.is_relative_to(self.cache))
        assert not outside, f"written outside the HF cache: {outside[:5]}"
        real = self.cache.resolve()
        for p in new:
            if p.is_symlink():
                assert p.resolve().is_relative_to(real), f"{p} links out of the cache"


def bounded(fn: Any, *args: Any, **kwargs: Any) -> Outcome:
    """Accepted or refused in one printable line, within the bounds, nothing written outside."""
    box = Contained()
    out = assert_bounded(fn, *args, **kwargs)
    box.check()
    assert out.detail.isprintable(), f"the line holds control characters: {out.detail!r}"
    return out


def refused(fn: Any, *args: Any, match: str = "", **kwargs: Any) -> Outcome:
    box = Contained()
    out = assert_refused(fn, *args, match=match, **kwargs)
    box.check()
    assert out.detail.isprintable(), f"the line holds control characters: {out.detail!r}"
    return out


def blobs_of(repo_id: str) -> list[Path]:
    folder = cache() / f"models--{repo_id.replace('/', '--')}" / "blobs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


# -- the reproductions ----------------------------------------------------------------


def test_a_digest_that_is_a_path_plants_nothing(lying: HubServer) -> None:
    repo_id = new_repo_id("planted")
    repo = gguf_repo(lying, repo_id)
    repo.files[FILE].listed = {"lfs": {"sha256": "../../../x/planted", "size": SMALL, "pointerSize": 134}}
    out = refused(download_ref, repo_id, match="SHA-256")
    assert "../../../x/planted" in out.detail
    assert not list(cache().parent.rglob("planted*"))


def test_a_body_longer_than_declared_is_never_written_past_the_size(lying: HubServer) -> None:
    repo_id = new_repo_id("longer")
    f = gguf_repo(lying, repo_id).files[FILE]
    f.served = f.data + b"\0" * 100
    refused(download_ref, repo_id, match="more than the 1,536 bytes")
    assert not blobs_of(repo_id)  # neither a blob nor a partial
    f.served, f.endless = None, True  # and one that never ends stops as soon as it goes over
    out = refused(download_ref, repo_id, match="more than the 1,536 bytes")
    assert out.seconds < 5 and not blobs_of(repo_id)


def test_a_body_shorter_than_declared_is_kept_for_a_resume_and_never_accepted(lying: HubServer) -> None:
    repo_id = new_repo_id("shorter")
    f = gguf_repo(lying, repo_id).files[FILE]
    f.served = f.data[:1000]
    refused(download_ref, repo_id, match="sent 1,000 of the 1,536 bytes")
    [partial] = blobs_of(repo_id)
    assert partial.name.endswith(".cattery-partial") and partial.stat().st_size == 1000
    f.served = None  # the hub mends its ways: the download continues and is checked
    [path] = download_ref(repo_id)
    assert path.read_bytes() == f.data


@pytest.mark.parametrize(
    "name",
    [
        "../x.gguf",
        "a/../../b.gguf",
        "ABSOLUTE/x.gguf",
        "a\x00b.gguf",
        "a\nb.gguf",
        "\x1b]0;pwned\x07x.gguf",
        "\u202egguf.exe",
        "a\\..\\..\\b.gguf",
        "C:/x.gguf",
        "./x.gguf",
        "a//b.gguf",
        "dir/",
        "",
        "x" * 5000 + ".gguf",
        "d/" * 40 + "x.gguf",
    ],
)
def test_hostile_file_names_are_refused_before_touching_a_path(lying: HubServer, name: str) -> None:
    name = name.replace("ABSOLUTE", str(cache().parent / "abs"))
    repo_id = new_repo_id("name")
    repo = gguf_repo(lying, repo_id)
    repo.add(name, small_gguf_bytes())
    refused(download_ref, f"{repo_id}:{FILE}", match="file name")
    assert not (cache().parent / "abs").exists()


@pytest.mark.parametrize(
    ("where", "key", "value", "match"),
    [
        ("lfs", "sha256", "0" * 63, "SHA-256"),
        ("lfs", "sha256", "g" * 64, "SHA-256"),
        ("lfs", "sha256", 12345, "SHA-256"),
        ("lfs", "sha256", None, "SHA-256"),
        ("lfs", "size", 100, "two sizes"),
        ("file", "lfs", "x", "LFS entry"),
        ("file", "size", -1, "size"),
        ("file", "size", "1536", "size"),
        ("file", "size", 1.5, "size"),
        ("file", "size", True, "size"),
        ("file", "size", 2**80, "size"),
        ("git", "size", -1, "size"),
        ("git", "size", "7", "size"),
        ("git", "size", None, "size"),
        ("git", "blobId", "/etc/passwd", "blob id"),
        ("file", "blobId", "../x", "blob id"),
        ("file", "rfilename", 5, "file name"),
        ("file", "rfilename", None, "file name"),
        ("repo", "sha", "../../x", "commit id"),
        ("repo", "sha", None, "commit id"),
        ("repo", "sha", 7, "commit id"),
        ("repo", "sha", "G" * 40, "commit id"),
        ("repo", "siblings", "abc", "not a list"),
        ("repo", "siblings", {"a": 1}, "not a list"),
        ("repo", "siblings", [1], "file 1 is a number"),
        ("repo", "siblings", [[]], "file 1 is a list"),
        ("repo", "siblings", None, "no GGUF files"),
    ],
)
def test_wrong_types_and_values_in_a_listing_are_one_line(
    lying: HubServer, where: str, key: str, value: Any, match: str
) -> None:
    repo_id = new_repo_id("listing")
    repo = gguf_repo(lying, repo_id)
    f = repo.files[FILE]
    if where == "lfs":
        f.listed = {"lfs": {"sha256": f.sha256, "size": SMALL, key: value}}
    elif where == "file":
        f.listed = {key: value}
    elif where == "git":  # a small file, with no LFS entry to say its size twice
        repo.files["README.md"].listed = {key: value}
    else:
        repo.listed = {key: value}
    refused(download_ref, repo_id, match=match)
    assert not blobs_of(repo_id)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"{", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"sha": "\xff"}', "UTF-8"),
        (b"[]", "a list, not an object"),
        (b"null", "null, not an object"),
        (b'"x"', "text, not an object"),
        (b'{"sha": NaN}', "JSON"),
        (b'{"sha": 1e400}', "not finite"),
        (b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
    ],
)
def test_malformed_listings_are_one_line(lying: HubServer, body: bytes, match: str) -> None:
    repo_id = new_repo_id("raw")
    gguf_repo(lying, repo_id).raw_info = body
    out = refused(download_ref, repo_id, match=match)
    assert out.detail.startswith(repo_id)


@pytest.mark.parametrize(
    ("other", "match"),
    [
        ("tiny.Q4_0.gguf", "twice"),
        ("TINY.Q4_0.GGUF", "twice"),
        ("tiny.Q4_0.gguf/x.gguf", "both a file and a folder"),
        ("caf\u00e9/a", "twice"),  # beside "cafe\u0301/a": one name on a macOS disk
    ],
)
def test_duplicate_names_are_refused(lying: HubServer, other: str, match: str) -> None:
    repo_id = new_repo_id("dupes")
    repo = gguf_repo(lying, repo_id)
    repo.add("cafe\u0301/a", b"x")
    repo.files["README.md"].listed = {"rfilename": other}
    refused(download_ref, repo_id, match=match)


@pytest.mark.parametrize(
    "parts",
    [
        ["m-00001-of-00002.gguf", "m-00003-of-00002.gguf"],
        ["m-00001-of-00002.gguf", "m-00002-of-00003.gguf"],
        ["m-00000-of-00000.gguf"],
        ["m-00002-of-00002.gguf"],
    ],
)
def test_split_parts_numbered_wrong_are_incomplete(lying: HubServer, parts: list[str]) -> None:
    repo_id = new_repo_id("split")
    repo = lying.repo(repo_id)
    for name in parts:
        repo.add(name, small_gguf_bytes())
    refused(download_ref, repo_id, match="split")


def test_hostile_commit_and_etag_headers_change_nothing(lying: HubServer) -> None:
    repo_id = new_repo_id("headers")
    repo = gguf_repo(lying, repo_id)
    repo.commit_header = "../../../../x"
    repo.etag_header = "../../../planted"
    out = bounded(download_ref, repo_id, keep_value=True)
    [path] = out.value
    assert path.is_relative_to(cache()) and repo.sha in str(path) and path.read_bytes() == repo.files[FILE].data


def test_a_small_file_that_does_not_match_its_git_blob_id_is_deleted(lying: HubServer) -> None:
    repo_id = new_repo_id("gitblob")
    repo = lying.repo(repo_id)
    repo.add("model.safetensors", b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    config = repo.add("config.json", b'{"architectures": ["LlamaForCausalLM"]}')
    config.served = config.data.replace(b"LlamaForCausalLM", b"EvilEvilEvilEvil")  # the same length
    refused(download_ref, repo_id, match="git blob id")
    assert not [p for p in blobs_of(repo_id) if p.stat().st_size == config.size]


def test_a_planted_link_in_the_cache_is_never_written_through(lying: HubServer) -> None:
    repo_id = new_repo_id("links")
    repo = gguf_repo(lying, repo_id)
    victim = cache().parent / "victim.txt"
    victim.write_text("keep me")
    blobs = cache() / f"models--{repo_id.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{repo.files[FILE].sha256}.cattery-partial").symlink_to(victim)
    bounded(download_ref, repo_id)
    assert victim.read_text() == "keep me"
    # A snapshot folder that is a link out of the cache: refused, nothing written there.
    other = new_repo_id("links")
    gguf_repo(lying, other)
    elsewhere = cache().parent / "elsewhere"
    elsewhere.mkdir()
    snapshots = cache() / f"models--{other.replace('/', '--')}" / "snapshots"
    snapshots.mkdir(parents=True)
    (snapshots / lying.repos[other].sha).symlink_to(elsewhere)
    refused(download_ref, other, match="out of the Hugging Face cache")
    assert not list(elsewhere.iterdir())
    (snapshots / lying.repos[other].sha).unlink()
    # A file where the cache needs a folder: one line, not a traceback.
    third = new_repo_id("links")
    gguf_repo(lying, third)
    (cache() / f"models--{third.replace('/', '--')}").mkdir()
    (cache() / f"models--{third.replace('/', '--')}" / "blobs").write_text("not a folder")
    refused(download_ref, third, match="needs a folder")


def test_hostile_revisions_and_refs_are_one_line(lying: HubServer) -> None:
    repo_id = new_repo_id("rev")
    gguf_repo(lying, repo_id)
    for revision in ("../../x", "/etc", "a/../b", "main\n", "x.lock", "a//b", "", "r" * 300):
        refused(download_ref, repo_id, revision, match="revision")
    refused(download_ref, repo_id, "v1.0", match="no such revision")  # a good name the hub does not know
    for ref in ("../..", "a/..", "../../x", "/etc/passwd", "owner/repo/x", "a--b/c", "o/r:\x1b[2J", "x" * 200 + "/r"):
        assert parse_ref(ref) is None, ref
    assert revision_problem("refs/pr/1") is None and revision_problem("v1.0") is None
    assert path_problem("sub/dir/model.Q4_K_M.gguf") is None and path_problem("模型.gguf") is None


# -- search answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"{}", "not a list"),
        (b"[1]", "entry 1"),
        (b'[{"id": "../x"}]', "names a repo"),
        (b'[{"id": 5}]', "names a repo"),
        (b'[{"id": "a/b\\u001b[2J"}]', "names a repo"),
        (b"[" + b'{"id": "a/b"},' * 400_000 + b"{}]", "more than Cattery reads"),
    ],
)
def test_hostile_search_answers_are_one_line(lying: HubServer, body: bytes, match: str) -> None:
    from app.hub.remote import search

    lying.raw_search = body
    try:
        refused(search, "x", match=match)
    finally:
        lying.raw_search = None


def test_wrong_types_in_shown_only_fields_are_left_out(lying: HubServer) -> None:
    from app.hub.remote import search

    lying.raw_search = json.dumps(
        [{"id": "a/b", "downloads": "many", "likes": -3, "lastModified": "yesterday", "gated": [1]}]
    ).encode()
    try:
        out = bounded(search, "x", keep_value=True)
    finally:
        lying.raw_search = None
    [hit] = out.value
    assert (hit.id, hit.downloads, hit.likes, hit.last_modified, hit.gated) == ("a/b", 0, 0, None, False)


def test_search_words_and_limits_from_the_user_are_checked() -> None:
    from app.hub.remote import search

    refused(search, "x" * 300, match="longer than")
    refused(search, "x", limit=-5, match="limit")
    refused(search, "x", limit=10**6, match="limit")


# -- remote GGUF headers --------------------------------------------------------------------------


def _remote(lying: HubServer, data: bytes, *, endless: bool = False, size: int | str | None = "listed") -> Outcome:
    """`data` as a GGUF on the hub, its header read by ranges (`size`: what the listing said)."""
    from app.hub.remote import remote_model_info

    repo = gguf_repo(lying, new_repo_id("header"), data)
    repo.files[FILE].endless = endless
    return bounded(remote_model_info, repo.id, FILE, size=len(data) if size == "listed" else size)


def test_remote_headers_that_lie_are_bounded(lying: HubServer) -> None:
    honest = gguf_header()
    assert _remote(lying, honest).kind == "ok"
    assert _remote(lying, honest, endless=True).kind == "ok"  # ranges that run on are read to their length
    assert _remote(lying, honest, size=None).kind == "ok"  # the size learnt from the first range
    assert _remote(lying, gguf_header(b"x" * 64, name_length=1 << 40)).kind == "refused"
    out = _remote(lying, gguf_header(b"x" * (33 << 20)))  # more than a remote header may take
    assert out.kind == "refused" and "hostile/header" in out.detail
    assert _remote(lying, b"GGUF" + os.urandom(4000)).kind in ("refused", "ok")
    assert _remote(lying, honest[:40], size=len(honest)).kind == "refused"  # the file is shorter than listed


# -- the worst cases -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "case"), WORST_CASES, ids=[name for name, _ in WORST_CASES])
def test_worst_cases_are_bounded(name: str, case: Any) -> None:
    out = run_bounded(case)
    assert out.bounded, f"{name}: {out}"
    assert out.detail.isprintable()


# -- the library ---------------------------------------------------------------------------------


def test_split_parts_are_found_by_name_not_by_glob(tmp_path: Path) -> None:
    from app.hub.library import model_files, remove_model

    mine = [tmp_path / f"m[0-9]-0000{i}-of-00002.gguf" for i in (1, 2)]
    theirs = [tmp_path / f"m5-0000{i}-of-00002.gguf" for i in (1, 2)]
    for p in mine + theirs:
        p.write_bytes(b"GGUF")
    assert model_files(mine[0]) == mine
    remove_model(mine[0])
    assert all(p.exists() for p in theirs)


def test_removing_a_linked_model_keeps_the_file_it_links_to(tmp_path: Path) -> None:
    from app.hub.library import remove_model

    target = tmp_path / "elsewhere" / "model.gguf"
    target.parent.mkdir()
    target.write_bytes(b"GGUF")
    link = tmp_path / "models" / "model.gguf"
    link.parent.mkdir()
    link.symlink_to(target)
    remove_model(link)
    assert not link.exists() and target.read_bytes() == b"GGUF"
    notes = tmp_path / "notes.txt"  # `models rm PATH` deletes models, not whatever a path names
    notes.write_text("mine")
    assert_refused(remove_model, notes, match="not a GGUF file")
    assert notes.read_text() == "mine"


# -- the command line -----------------------------------------------------------------------------


@pytest.fixture
def hf_env(lying: HubServer, tmp_path: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": lying.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": "",
        "HF_HUB_OFFLINE": "0",
    }


def test_refs_typed_on_the_command_line_are_one_line(lying: HubServer, hf_env: dict[str, str], tmp_path: Path) -> None:
    repo_id = new_repo_id("cli")
    gguf_repo(lying, repo_id)
    before = everything(tmp_path)
    for args in (
        ["models", "download", "../../x"],
        ["models", "download", "../.."],
        ["models", "download", "/etc/passwd"],
        ["models", "download", "a/b\nc"],
        ["models", "download", f"{repo_id}:../x"],
        ["models", "download", repo_id, "--revision", "../../x"],
        ["models", "files", "a/.."],
        ["models", "search", "x", "--limit", "-5"],
    ):
        r = run_cattery(*args, env=hf_env, home=tmp_path / "home")
        line = assert_one_line_failure(r)
        assert line.isprintable(), line
    new = everything(tmp_path) - before
    assert all(p.is_relative_to(tmp_path / "home") or p.is_relative_to(tmp_path / "hf") for p in new), new


def test_the_command_line_against_a_lying_hub(lying: HubServer, hf_env: dict[str, str], tmp_path: Path) -> None:
    planted = new_repo_id("cli-planted")
    gguf_repo(lying, planted).files[FILE].listed = {"lfs": {"sha256": "../../../x/planted", "size": SMALL}}
    endless = new_repo_id("cli-endless")
    gguf_repo(lying, endless).files[FILE].endless = True
    header = new_repo_id("cli-header")
    gguf_repo(lying, header, gguf_header(b"x" * 64, name_length=1 << 40))
    home = tmp_path / "home"
    before = everything(tmp_path)
    assert_one_line_failure(run_cattery("models", "download", planted, env=hf_env, home=home), match="SHA-256")
    # (a download that started has said what it fetches on the line before its error)
    failed = run_cattery("models", "download", endless, env=hf_env, home=home)
    assert failed.returncode not in (0, 70) and "Traceback" not in failed.stderr
    [line] = [x for x in failed.stderr.splitlines() if x.startswith("cattery: error:")]
    assert "more than the 1,536 bytes" in line and failed.stderr.rstrip().endswith(line)
    info = run_cattery("models", "info", f"{header}:Q4_0", env=hf_env, home=home)
    assert_one_line_failure(info, match=header)
    files = run_cattery("models", "files", header, env=hf_env, home=home)
    assert files.returncode == 0 and "header unreadable" in files.stdout and "Traceback" not in files.stderr
    new = everything(tmp_path) - before
    assert all(p.is_relative_to(home) or p.is_relative_to(tmp_path / "hf") for p in new), new
    assert not list(tmp_path.rglob("planted*"))


# -- mutations of each format, from a real valid one ----------------------------------------------

HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["../x", "/abs/x.gguf", "a/../../b.gguf", "a\x00b", "0" * 64, "..", "a" * 300, FILE]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
LISTING_KEYS = st.sampled_from(["rfilename", "size", "blobId", "lfs", "sha256", "sha", "siblings", "id"])


EDITS = byte_edits()


@MUTATIONS
@given(target=st.sampled_from(["repo", "file", "git", "lfs"]), key=LISTING_KEYS, value=HOSTILE_VALUES)
def test_mutated_listing_fields(lying: HubServer, target: str, key: str, value: Any) -> None:
    repo_id = new_repo_id("mut-field")
    repo = gguf_repo(lying, repo_id)
    f = repo.files[FILE]
    if target == "repo":
        repo.listed = {key: value}
    elif target == "file":
        f.listed = {key: value}
    elif target == "git":
        repo.files["README.md"].listed = {key: value}
    else:
        f.listed = {"lfs": {"sha256": f.sha256, "size": SMALL, key: value}}
    bounded(download_ref, repo_id)


@MUTATIONS
@given(edits=EDITS)
def test_mutated_listing_bytes(lying: HubServer, edits: list[tuple[int, int, int]]) -> None:
    repo_id = new_repo_id("mut-bytes")
    repo = gguf_repo(lying, repo_id)
    repo.raw_info = mutate_bytes(json.dumps(repo.info(True)).encode(), edits)
    bounded(download_ref, repo_id)


@MUTATIONS
@given(edits=EDITS)
def test_mutated_search_answers(lying: HubServer, edits: list[tuple[int, int, int]]) -> None:
    from app.hub.remote import search

    repo = gguf_repo(lying, new_repo_id("mut-search"))
    lying.raw_search = mutate_bytes(json.dumps([repo.summary(), {**repo.summary(), "id": "other/x"}]).encode(), edits)
    try:
        bounded(search, "mut-search")
    finally:
        lying.raw_search = None


@MUTATIONS
@given(edits=EDITS)
@pytest.mark.slow
def test_mutated_download_bodies(lying: HubServer, edits: list[tuple[int, int, int]]) -> None:
    repo_id = new_repo_id("mut-body")
    f = gguf_repo(lying, repo_id).files[FILE]
    f.served = mutate_bytes(f.data, edits)
    out = bounded(download_ref, repo_id)
    assert (out.kind == "ok") == (f.served == f.data), out
    assert all(p.stat().st_size <= SMALL for p in blobs_of(repo_id))


@MUTATIONS
@given(edits=EDITS)
def test_mutated_remote_headers(lying: HubServer, edits: list[tuple[int, int, int]]) -> None:
    _remote(lying, mutate_bytes(gguf_header(), edits))
