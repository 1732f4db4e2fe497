"""Asking the hub, with a bound on what each answer may cost.

huggingface_hub's own calls read whatever the server sends: `HfApi.model_info` and
`list_models` take the whole body into memory before parsing it, an error body is read in
full to find its message, `http_get` writes a body longer than the file on and on, and
`HfFileSystem` keeps a range answer whole even when the server ignored the range. A hub that
lies (a proxy, a mirror, a hostile `HF_ENDPOINT`) could fill the memory or the disk. So Cattery
uses only huggingface_hub's connection (its client, headers, token and endpoint) and reads
each answer itself:

- an API answer is read up to a byte limit and a deadline, then parsed by app.untrusted;
- an error is known by its status and the hub's `X-Error-Code` header; its body is never read;
- a content encoding Cattery did not ask for (it asks for none) is refused, except gzip and
  deflate, which are unpacked with the same byte limit (a small body cannot unpack to gigabytes);
- a range is read to its length and no further (`RangeFile`, for a remote GGUF's header).

Every failure is a `HubError`, one line naming what was asked for.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from app.errors import CatteryError
from app.untrusted import parse_json

# An API answer takes at most this long to arrive in full, whatever the server's pace (each
# read also has huggingface_hub's own timeout, HF_HUB_DOWNLOAD_TIMEOUT, 10 s by default).
ANSWER_SECONDS = 30.0
# A remote header, all its ranges together (an honest one is a few MB: 2 minutes is 100 kB/s).
HEADER_SECONDS = 120.0
HEADER_BLOCK = 2 * 1024 * 1024  # a remote header is read in ranges of this size
# A remote GGUF header: the largest honest ones (a 256k vocabulary with its merges) are about
# 12 MB; a header that needs more than this is not read on.
MAX_HEADER_BYTES = 32 * 1024 * 1024
MAX_RANGE_REQUESTS = 64  # …in at most this many requests
CACHED_BLOCKS = 4  # blocks kept for the reads that go back (a token's text inside the vocabulary)


class HubError(CatteryError):
    """The hub said no, could not be reached, or gave an answer Cattery does not take."""


class HubRefusal(HubError):
    """The hub answered with an error status (kept, for the callers that tell them apart)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


@contextlib.contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """The connection's exceptions (and huggingface_hub's) as one line each, naming what was asked for."""
    from huggingface_hub import errors

    if offline():
        raise HubError(f"{what}: offline (HF_HUB_OFFLINE is set), the hub is not asked")
    try:
        yield
    except errors.GatedRepoError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", 401)
        raise HubError(_gated(what, status)) from None
    except errors.RepositoryNotFoundError:
        raise HubError(f"{what}: no such repo on the hub (a private one needs HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{what}: no such revision") from None
    except errors.RemoteEntryNotFoundError:
        raise HubError(f"{what}: no such file in the repo") from None
    except errors.OfflineModeIsEnabled:
        raise HubError(f"{what}: offline (HF_HUB_OFFLINE is set)") from None
    except errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise HubError(_status_line(what, status if isinstance(status, int) else 0, "", "")) from None
    except OSError as exc:  # connection refused, DNS
        raise HubError(unreachable(what, exc)) from None
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore", "h11")):
            raise HubError(unreachable(what, exc)) from None
        raise


OFFLINE_HINT = "set HF_HUB_OFFLINE=1 to use only the models already downloaded"


def unreachable(what: str, exc: BaseException) -> str:
    """Why the hub could not be reached, in one line with what to do about it.

    Each of these is answered at once by the network stack and would be answered the same way
    a second later, so nothing is retried: without a network, a search fails in a moment, not
    after a round of retries."""
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(endpoint()).hostname or endpoint()
    causes: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in causes and len(causes) < 8:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(c, socket.gaierror) for c in causes):
        why = f"the name {host} does not resolve (no network, or no DNS)"
    elif any(isinstance(c, ConnectionRefusedError) for c in causes):
        why = f"{host} refused the connection"
    elif any(isinstance(c, TimeoutError) or "Timeout" in type(c).__name__ for c in causes):
        why = f"{host} did not answer within {_timeout():g} s"
    elif any(isinstance(c, (ConnectionError, socket.herror)) or "ConnectError" in type(c).__name__ for c in causes):
        why = f"no connection to {host} ({first_line(exc)})"
    else:
        why = f"{type(exc).__name__}: {first_line(exc)}"
    return f"{what}: cannot reach the hub: {why}; {OFFLINE_HINT}"


def _gated(what: str, status: int) -> str:
    if status == 403:
        return f"{what}: gated, and HF_TOKEN has no access to it: accept its terms on the hub with that account"
    return f"{what}: gated: accept its terms on the hub and set HF_TOKEN to a token of that account"


def _status_line(what: str, status: int, code: str, message: str) -> str:
    """The hub's refusal, from its status and `X-Error-Code` (huggingface_hub's reading of them)."""
    if code == "GatedRepo":
        return _gated(what, status)
    if code == "RepoNotFound" or (status == 401 and "invalid credentials" not in message.lower()):
        return f"{what}: no such repo on the hub (a private one needs HF_TOKEN)"
    if code == "RevisionNotFound":
        return f"{what}: no such revision"
    if code == "EntryNotFound":
        return f"{what}: no such file in the repo"
    if status == 401:
        return f"{what}: the hub refused HF_TOKEN (401): check the token"
    if status == 403:
        return f"{what}: forbidden (403): HF_TOKEN has no access"
    return f"{what}: the hub answered {status or '?'}"


# -- the connection ---------------------------------------------------------------------


def endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def resolve_url(repo: str, revision: str, path: str) -> str:
    """Where a file's bytes are: names already checked (app.hub.names), quoted here all the same."""
    return f"{endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"


def _timeout() -> float:
    from huggingface_hub import constants

    return float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


def request_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    headers = dict(build_hf_headers())
    headers["Accept-Encoding"] = "identity"  # a byte limit is a byte limit
    headers.update(extra or {})
    return headers


@contextlib.contextmanager
def stream(url: str, what: str, *, headers: dict[str, str] | None = None, params: Any = None) -> Iterator[Any]:
    """A GET whose status is checked (a refusal is one line, its body never read), the body
    left to the caller to read within its own bounds.

    Connection errors are left to the caller too: a download retries them, the others wrap the
    call in `hub_errors`."""
    from huggingface_hub.utils import get_session

    client = get_session()
    with client.stream("GET", url, headers=request_headers(headers), params=params, timeout=_timeout()) as r:
        if not 200 <= r.status_code < 300:
            code = r.headers.get("X-Error-Code", "")
            message = r.headers.get("X-Error-Message", "")
            raise HubRefusal(_status_line(what, r.status_code, code, message), r.status_code)
        yield r


class Unpacker:
    """Undo a gzip or deflate content encoding without ever holding more than `limit` bytes."""

    def __init__(self, encoding: str, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        self.out = 0
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self.z: Any = None
        elif encoding in ("gzip", "x-gzip"):
            self.z = zlib.decompressobj(wbits=31)
        elif encoding == "deflate":
            self.z = zlib.decompressobj(wbits=15)
        else:
            raise HubError(f"{what}: the hub answered in an encoding Cattery did not ask for ({encoding[:20]!r})")

    def feed(self, data: bytes) -> bytes:
        if self.z is None:
            out = data
        else:
            try:
                out = self.z.decompress(data, self.limit - self.out + 1)
            except zlib.error:
                raise HubError(f"{self.what}: the hub's answer is damaged (its compression does not unpack)") from None
            if self.z.unconsumed_tail:
                self.out = self.limit + 1
                return b""
        self.out += len(out)
        return out


def read_body(response: Any, what: str, max_bytes: int, deadline: float) -> bytes:
    """The body, refused as soon as it runs past `max_bytes` or past the deadline."""
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise HubError(f"{what}: the hub's answer is {int(declared):,} bytes, more than Cattery reads ({max_bytes:,})")
    unpack = Unpacker(response.headers.get("Content-Encoding", ""), what, max_bytes)
    body = bytearray()
    for chunk in response.iter_raw():
        body += unpack.feed(chunk)
        if unpack.out > max_bytes:
            raise HubError(f"{what}: the hub's answer runs past {max_bytes:,} bytes, more than Cattery reads")
        if time.monotonic() > deadline:
            raise HubError(f"{what}: the hub's answer took more than {ANSWER_SECONDS:.0f} s to arrive")
    return bytes(body)


def get_json(url: str, what: str, *, max_bytes: int, params: Any = None) -> Any:
    """An API answer, bounded in bytes and time, parsed with bounds on depth and numbers."""
    deadline = time.monotonic() + ANSWER_SECONDS
    with hub_errors(what), stream(url, what, params=params) as r:
        body = read_body(r, what, max_bytes, deadline)
    try:
        return parse_json(body, f"{what}: the hub's answer")
    except CatteryError as exc:  # InputError: the same line, as the hub's error
        raise HubError(str(exc)) from None


# -- a remote file, by ranges ---------------------------------------------------------------


class RangeFile:
    """A remote file read through range requests, for the header parser (read, seek, tell).

    Bounded: at most `max_bytes` fetched in at most `MAX_RANGE_REQUESTS` requests, a few blocks
    kept; each answer read to the length asked and no further, whatever the server sends.
    """

    def __init__(self, url: str, what: str, size: int | None, *, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.url = url
        self.what = what
        self.size = size
        self.max_bytes = max_bytes
        self.pos = 0
        self.fetched = 0
        self.requests = 0
        self.blocks: OrderedDict[int, bytes] = OrderedDict()
        self.deadline = time.monotonic() + HEADER_SECONDS

    def total(self) -> int:
        if self.size is None:
            self._block(0)
        return self.size or 0

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self.pos
        elif whence == 2:
            offset += self.total()
        if offset < 0:
            raise HubError(f"{self.what}: the header points before the start of the file")
        self.pos = offset
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self.total() - self.pos)
        if n > self.max_bytes:
            raise HubError(
                f"{self.what}: the header asks to read {n:,} bytes at once, more than Cattery reads "
                f"of a remote file ({self.max_bytes:,})"
            )
        out = bytearray()
        while len(out) < n:
            index, offset = divmod(self.pos, HEADER_BLOCK)
            block = self._block(index)
            piece = block[offset : offset + n - len(out)]
            if not piece:
                break  # the end of the file
            out += piece
            self.pos += len(piece)
        return bytes(out)

    def _block(self, index: int) -> bytes:
        if index in self.blocks:
            self.blocks.move_to_end(index)
            return self.blocks[index]
        start = index * HEADER_BLOCK
        if self.size is not None and start >= self.size:
            return b""
        end = start + HEADER_BLOCK if self.size is None else min(start + HEADER_BLOCK, self.size)
        want = end - start
        self.requests += 1
        if self.fetched + want > self.max_bytes or self.requests > MAX_RANGE_REQUESTS:
            raise HubError(
                f"{self.what}: the header needs more than {self.max_bytes // 2**20} MiB (or {MAX_RANGE_REQUESTS} "
                "requests) of the remote file; Cattery reads no more than that"
            )
        data = self._fetch(start, want)
        self.fetched += len(data)
        self.blocks[index] = data
        while len(self.blocks) > CACHED_BLOCKS:
            self.blocks.popitem(last=False)
        return data

    def _fetch(self, start: int, want: int) -> bytes:
        deadline = min(time.monotonic() + ANSWER_SECONDS, self.deadline)
        headers = {"Range": f"bytes={start}-{start + want - 1}"}
        with stream(self.url, self.what, headers=headers) as r:
            if r.status_code == 206:
                self._learn_size(r.headers.get("Content-Range", ""), start)
            elif start > 0:
                raise HubError(f"{self.what}: the hub ignored the range asked for (answered {r.status_code})")
            elif self.size is None:  # the whole file from its start: its length is its size
                length = r.headers.get("Content-Length", "").strip()
                if not length.isdigit():
                    raise HubError(f"{self.what}: the hub did not say how large the file is")
                self.size = int(length)
            unpack = Unpacker(r.headers.get("Content-Encoding", ""), self.what, want)
            data = bytearray()
            for chunk in r.iter_raw():
                data += unpack.feed(chunk)
                if len(data) >= want or unpack.out > want:
                    break  # what was asked for; the rest (if the server sends on) is not read
                if time.monotonic() > deadline:
                    raise HubError(f"{self.what}: the hub is too slow to send the header (a range took too long)")
        data = data[:want]
        assert self.size is not None  # learnt above, or known
        if len(data) < want and start + len(data) < self.size:
            raise HubError(f"{self.what}: the hub sent {len(data):,} bytes of the {want:,} asked for")
        return bytes(data)

    def _learn_size(self, content_range: str, start: int) -> None:
        """`bytes 0-2097151/1234567`: the file's size, when it was not known; the start, checked."""
        head, _, total = content_range.partition("/")
        first = head.removeprefix("bytes").strip().partition("-")[0]
        if first.isdigit() and int(first) != start:
            raise HubError(f"{self.what}: the hub sent a range other than the one asked for")
        if self.size is None:
            if not total.strip().isdigit():
                raise HubError(f"{self.what}: the hub did not say how large the file is")
            self.size = int(total)
