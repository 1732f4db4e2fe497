"""A hub that lies, and the worst of its lies as zero-argument cases.

`lying_hub()` starts the loopback test hub (tests/hub_server.py) and points huggingface_hub
at it and at an empty cache of its own, for code that runs in this process (the tests, the
bench). `WORST_CASES` are the answers that used to fill the disk, the memory or the clock:
a download body that never ends (a 1.5 kB file used to receive 128 MiB and more), a search
or a listing of millions of entries, a listing just under the byte limit with the most
entries it can hold, JSON nested 100,000 deep, a gzip bomb, a remote GGUF header that asks
for a terabyte-long string, a range answer that never ends, an answer that trickles in.
bench/hostile.py times each and measures its peak memory; tests/hostile/test_hostile_hub.py runs
them under tests.hostile.bounds's bounds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.hub_server import HubRepo, HubServer

SMALL = 1536  # the 1.5 kB file


def small_gguf_bytes(n: int = SMALL) -> bytes:
    """Bytes that stand for a GGUF file in a download (nothing reads them as one)."""
    return (b"GGUF" + bytes(i % 251 for i in range(n)))[:n]


def gguf_header(name: bytes = b"tiny", *, name_length: int | None = None) -> bytes:
    """A small llama GGUF header (no tensors), with its name's length a lie if asked."""

    def text(data: bytes, length: int | None = None) -> bytes:
        return struct.pack("<Q", len(data) if length is None else length) + data

    def kv(key: str, vtype: int, payload: bytes) -> bytes:
        return text(key.encode()) + struct.pack("<I", vtype) + payload

    string, u32 = 8, 4
    kvs = [
        kv("general.architecture", string, text(b"llama")),
        kv("general.name", string, text(name, name_length)),
        kv("llama.context_length", u32, struct.pack("<I", 2048)),
        kv("llama.block_count", u32, struct.pack("<I", 2)),
        kv("llama.embedding_length", u32, struct.pack("<I", 64)),
        kv("llama.attention.head_count", u32, struct.pack("<I", 4)),
    ]
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)


@contextlib.contextmanager
def lying_hub() -> Iterator[HubServer]:
    """The test hub on loopback, with huggingface_hub's endpoint and cache pointed at it and at
    an empty temporary folder (restored after), so the real code path runs in this process."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    server = HubServer().start()
    folder = tempfile.mkdtemp(prefix="cattery-lying-hub-")
    # Plain HTTP on loopback: a client without a certificate store, which a forked case would
    # otherwise load again (0.1 s) for every input. Everything else is huggingface_hub's own.
    _http.set_client_factory(
        lambda: httpx2.Client(
            event_hooks={"request": [_http.hf_request_event_hook]}, follow_redirects=True, timeout=None, verify=False
        )
    )
    saved = {name: getattr(constants, name) for name in ("ENDPOINT", "HF_HUB_CACHE", "HF_HUB_OFFLINE")}
    token = os.environ.get("HF_TOKEN")
    constants.ENDPOINT = server.url
    constants.HF_HUB_CACHE = str(Path(folder) / "hub")
    constants.HF_HUB_OFFLINE = False
    os.environ["HF_TOKEN"] = ""
    try:
        yield server
    finally:
        for name, value in saved.items():
            setattr(constants, name, value)
        if token is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = token
        _http.set_client_factory(_http.default_client_factory)
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def gguf_repo(server: HubServer, repo_id: str, data: bytes | None = None) -> HubRepo:
    """A repo with one small GGUF file and a README, honest until a test makes it lie."""
    repo = server.repo(repo_id)
    repo.add("tiny.Q4_0.gguf", small_gguf_bytes() if data is None else data)
    repo.add("README.md", b"# tiny\n")
    return repo


def download_ref(ref: str, revision: str | None = None) -> list[Path]:
    """`cattery models download REF`, without the command line around it."""
    from app.hub.download import download, plan_download
    from app.hub.names import parse_ref

    hub = parse_ref(ref)
    if hub is None:
        from app.errors import CatteryError

        raise CatteryError(f"{ref}: not a hub name")
    return download(plan_download(hub, revision))


def json_list_stream(entry: Callable[[int], bytes], count: int) -> Callable[[], Iterator[bytes]]:
    """A JSON list of `count` entries, sent as it is made (never whole in memory)."""

    def chunks() -> Iterator[bytes]:
        yield b"["
        batch: list[bytes] = []
        for i in range(count):
            batch.append(entry(i))
            if len(batch) == 1000:
                yield b",".join(batch) + (b"," if i + 1 < count else b"")
                batch = []
        yield b",".join(batch) + b"]"

    return chunks


def listing_head(repo: HubRepo) -> bytes:
    return b'{"id": "%s", "sha": "%s", "siblings": ' % (repo.id.encode(), repo.sha.encode())


# -- the worst cases --------------------------------------------------------------------------


def endless_download() -> Any:
    """A 1.5 kB file whose body never ends: refused at the first byte past 1.5 kB."""
    with lying_hub() as hub:
        gguf_repo(hub, "hostile/endless").files["tiny.Q4_0.gguf"].endless = True
        return download_ref("hostile/endless")


def longer_download() -> Any:
    """A 1.5 kB file served with 4 MB more than its listing declares."""
    with lying_hub() as hub:
        f = gguf_repo(hub, "hostile/longer").files["tiny.Q4_0.gguf"]
        f.served = f.data + b"\0" * 4_000_000
        return download_ref("hostile/longer")


def endless_small_git_file() -> Any:
    """A checkpoint's config.json (a small git file, no LFS digest) whose body never ends."""
    with lying_hub() as hub:
        repo = hub.repo("hostile/endless-config")
        repo.add("model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
        repo.add("config.json", b'{"architectures": ["LlamaForCausalLM"]}').endless = True
        return download_ref("hostile/endless-config")


def search_of_millions() -> Any:
    """A search answer of five million entries (about 400 MB), streamed."""
    from app.hub.remote import search

    with lying_hub() as hub:
        hub.raw_search = json_list_stream(lambda i: b'{"id": "owner/repo-%d", "downloads": %d}' % (i, i), 5_000_000)
        return search("repo", limit=20)


def listing_of_millions() -> Any:
    """A repo listing of five million files, streamed."""
    from app.hub.remote import repo_models

    with lying_hub() as hub:
        repo = hub.repo("hostile/millions")
        siblings = json_list_stream(lambda i: b'{"rfilename": "f%d.gguf", "size": 1}' % i, 5_000_000)

        def body() -> Iterator[bytes]:
            yield listing_head(repo)
            yield from siblings()
            yield b"}"

        repo.raw_info = body
        return repo_models("hostile/millions")


def listing_full_of_tiny_entries() -> Any:
    """A listing just under the byte limit holding as many entries as fit (~250,000)."""
    from app.hub.remote import MAX_LISTING_BYTES, repo_models

    with lying_hub() as hub:
        repo = hub.repo("hostile/crowded")
        head = listing_head(repo)
        entry = b'{"rfilename":"a","size":1},'
        count = (MAX_LISTING_BYTES - len(head) - 16) // (len(entry) + 5)
        repo.raw_info = head + b"[" + b",".join(b'{"rfilename":"%d","size":1}' % i for i in range(count)) + b"]}"
        return repo_models("hostile/crowded")


def search_hits_with_crowded_listings() -> Any:
    """A search of 100 hits whose listings (read for their size ranges, several at once) each
    hold as many tiny entries as the limit for those lets through."""
    from app.hub.remote import MAX_SIZES_BYTES, search

    with lying_hub() as hub:
        body = b"".join(b'{"rfilename":"%d.gguf","size":1},' % i for i in range(MAX_SIZES_BYTES // 40))
        hub.raw_search = json.dumps([{"id": f"crowded/repo-{i}"} for i in range(100)]).encode()
        for i in range(100):
            repo = hub.repo(f"crowded/repo-{i}")
            repo.raw_info = listing_head(repo) + b"[" + body[:-1] + b"]}"
        return search("repo", limit=100)


def listing_nested_deep() -> Any:
    """A listing nested 100,000 levels deep."""
    from app.hub.remote import repo_models

    with lying_hub() as hub:
        hub.repo("hostile/deep").raw_info = b'{"siblings": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        return repo_models("hostile/deep")


def gzip_bomb_listing() -> Any:
    """A listing of 64 kB that unpacks to 64 MB (a compressed body Cattery never asked for)."""
    from app.hub.remote import repo_models

    pack = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b" " * (1 << 20)
    bomb = b"".join(pack.compress(block) for _ in range(64)) + pack.flush()
    with lying_hub() as hub:
        hub.raw_headers = {"Content-Encoding": "gzip"}
        hub.repo("hostile/bomb").raw_info = bomb
        return repo_models("hostile/bomb")


def remote_header_asks_for_a_terabyte() -> Any:
    """A remote GGUF whose header holds a string said to be 2^40 bytes long."""
    from app.hub.remote import remote_model_info

    data = gguf_header(b"x" * 64, name_length=1 << 40)
    with lying_hub() as hub:
        repo = gguf_repo(hub, "hostile/terabyte-string", data)
        return remote_model_info(repo.id, "tiny.Q4_0.gguf", size=len(data))


def remote_header_range_never_ends() -> Any:
    """A remote GGUF whose range answers never end (the server sends on past the range)."""
    from app.hub.remote import remote_model_info

    data = gguf_header()
    with lying_hub() as hub:
        repo = gguf_repo(hub, "hostile/endless-range", data)
        repo.files["tiny.Q4_0.gguf"].endless = True
        return remote_model_info(repo.id, "tiny.Q4_0.gguf", size=len(data))


def trickling_listing() -> Any:
    """A listing that arrives one byte every 50 ms, for ever (the answer deadline, set to 2 s)."""
    import time

    from app.hub import http
    from app.hub.remote import repo_models

    def trickle() -> Iterator[bytes]:
        yield b'{"siblings": ['
        while True:
            time.sleep(0.05)
            yield b" "

    saved = http.ANSWER_SECONDS
    http.ANSWER_SECONDS = 2.0
    try:
        with lying_hub() as hub:
            hub.repo("hostile/trickle").raw_info = trickle
            return repo_models("hostile/trickle")
    finally:
        http.ANSWER_SECONDS = saved


WORST_CASES: list[tuple[str, Callable[[], object]]] = [
    ("download: a 1.5 kB file whose body never ends", endless_download),
    ("download: a 1.5 kB file served with 4 MB more", longer_download),
    ("download: a config.json whose body never ends", endless_small_git_file),
    ("search: an answer of 5 million entries", search_of_millions),
    ("listing: 5 million files", listing_of_millions),
    ("listing: ~250,000 entries just under the byte limit", listing_full_of_tiny_entries),
    ("search: 100 hits, each listing crowded to its limit", search_hits_with_crowded_listings),
    ("listing: JSON nested 100,000 deep", listing_nested_deep),
    ("listing: a gzip bomb (64 kB to 64 MB)", gzip_bomb_listing),
    ("remote header: a string of 2^40 bytes", remote_header_asks_for_a_terabyte),
    ("remote header: range answers that never end", remote_header_range_never_ends),
    ("listing: one byte every 50 ms, for ever", trickling_listing),
]
