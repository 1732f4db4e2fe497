"""HTTP to an inference server: JSON requests, a server-sent-event stream, and every fault
said in one line.

The server is outside Cattery and may be slow, wrong, overloaded or hostile: every answer is
bounded (a JSON body, one event line, the error text quoted back), connecting and waiting for
the next token each have their own timeout, and closing a stream closes its connection, which
is how llama-server, vLLM and llama-cpp-python's server learn to stop generating.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3

from app.errors import CatteryError

MAX_JSON_BYTES = 8 << 20  # /props of a server with a long chat template, a vocabulary dump: not more
MAX_EVENT_BYTES = 1 << 20  # one SSE line: a few tokens and their numbers
MAX_QUOTED = 200  # what of a server's error text is repeated to the person
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0  # the longest wait for the next byte: a prompt being evaluated, then each token


class RemoteError(CatteryError):
    """The server could not be used for this request; the message is one line for a person.

    `status` is the HTTP status (0: no answer at all); `retry_after` the seconds a 429/503
    asked to wait, if it said.
    """

    def __init__(self, message: str, *, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class NotJSON(RemoteError):
    """An answer that is not JSON: for a probe, a server that does not speak this endpoint."""


def check_url(url: str) -> str:
    """`url` without a trailing slash, if it is an http(s) URL with a host; else a one-line error."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CatteryError(f"{url!r} is not an engine URL: give http://HOST:PORT or https://HOST")
    if parts.username or parts.password:
        raise CatteryError("put the API key in an environment variable (api_key_env), not in the engine URL")
    return url.strip().rstrip("/")


def _quote(text: str) -> str:
    line = " ".join(text.split())
    return line[:MAX_QUOTED] + ("…" if len(line) > MAX_QUOTED else "")


def _server_message(resp: requests.Response) -> str:
    """The error a server put in its body (OpenAI's {"error": {"message"}}, llama-server's
    {"error": {"message"}}, FastAPI's {"detail"}), or its first words."""
    try:
        raw = resp.raw.read(64 << 10, decode_content=True) if resp.raw is not None else b""
    except Exception:  # a body that breaks while read: the status says enough
        raw = b""
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return _quote(text)
    if isinstance(body, dict):
        err = body.get("error", body.get("detail"))
        if isinstance(err, dict):
            err = err.get("message", err)
        if isinstance(err, list) and err:  # FastAPI validation errors
            err = err[0].get("msg", err[0]) if isinstance(err[0], dict) else err[0]
        if err is not None:
            return _quote(str(err))
    return _quote(text)


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(min(int(value), 24 * 3600))
    return None


class RemoteHTTP:
    """One server: its base URL, the API key (sent as a bearer token, never written anywhere),
    and the timeouts. Thread-safe for separate requests."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        verify: bool = True,
    ) -> None:
        self.base_url = check_url(base_url)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.verify = verify
        self._headers = {"Accept": "application/json", "User-Agent": "cattery"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session = requests.Session()
        self._session.trust_env = False  # a proxy from the environment is not asked about a local server

    @property
    def where(self) -> str:
        return self.base_url

    def close(self) -> None:
        self._session.close()

    # -- requests ------------------------------------------------------------------

    def get_json(self, path: str, *, timeout: float | None = None) -> Any:
        return self._json("GET", path, None, timeout)

    def post_json(self, path: str, body: dict[str, Any], *, timeout: float | None = None) -> Any:
        return self._json("POST", path, body, timeout)

    def _json(self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None) -> Any:
        resp = self._send(method, path, body, stream=True, timeout=timeout)
        try:
            raw = self._read_bounded(resp, MAX_JSON_BYTES)
        finally:
            resp.close()
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise NotJSON(f"the engine at {self.base_url} answered {path} with something not JSON") from None

    def _read_bounded(self, resp: requests.Response, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in resp.iter_content(64 << 10):
                size += len(chunk)
                if size > limit:
                    raise RemoteError(f"the engine at {self.base_url} sent an answer over {limit >> 20} MiB")
                chunks.append(chunk)
        except requests.RequestException as exc:
            raise self._fault(exc) from None
        return b"".join(chunks)

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, *, stream: bool, timeout: float | None
    ) -> requests.Response:
        url = self.base_url + path
        read = self.read_timeout if timeout is None else timeout
        try:
            resp = self._session.request(
                method,
                url,
                json=body,
                headers=self._headers,
                timeout=(self.connect_timeout, read),
                stream=stream,
                verify=self.verify,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise self._fault(exc) from None
        if resp.status_code >= 300:
            try:
                raise self._status_error(resp, path)
            finally:
                resp.close()
        return resp

    def _status_error(self, resp: requests.Response, path: str) -> RemoteError:
        code = resp.status_code
        where = self.base_url
        said = _server_message(resp)
        tail = f": {said}" if said else ""
        if code in (401, 403):
            return RemoteError(
                f"the engine at {where} refused the request ({code}{tail}): check the API key "
                "(its environment variable is named by the engine's api_key_env)",
                status=code,
            )
        if code == 404:
            return RemoteError(f"the engine at {where} has no {path} ({code}{tail})", status=code)
        if code in (429, 503):
            wait = _retry_after(resp)
            again = f"; it asks to wait {wait:g} s" if wait is not None else "; try again in a moment"
            return RemoteError(f"the engine at {where} is busy ({code}{tail}){again}", status=code, retry_after=wait)
        if 300 <= code < 400:
            return RemoteError(
                f"the engine at {where} redirects {path} ({code}): give the URL it redirects to", status=code
            )
        if code >= 500:
            return RemoteError(f"the engine at {where} failed ({code}{tail})", status=code)
        return RemoteError(f"the engine at {where} refused {path} ({code}{tail})", status=code)

    def _fault(self, exc: requests.RequestException) -> RemoteError:
        where = self.base_url
        text = str(exc)
        if isinstance(exc, requests.exceptions.SSLError):
            return RemoteError(f"the TLS certificate of {where} could not be verified ({_quote(text)[:120]})")
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return RemoteError(f"the engine at {where} did not accept a connection within {self.connect_timeout:g} s")
        if isinstance(exc, requests.exceptions.ReadTimeout):
            return RemoteError(f"the engine at {where} stopped answering (nothing for {self.read_timeout:g} s)")
        if isinstance(exc, requests.exceptions.ConnectionError):
            lowered = text.lower()
            if "name or service not known" in lowered or "nodename nor servname" in lowered or "resolve" in lowered:
                host = urlsplit(where).hostname
                return RemoteError(f"the engine's host name {host!r} does not resolve ({where})")
            if "refused" in lowered:
                return RemoteError(f"nothing answers at {where} (connection refused): is the server running?")
            return RemoteError(f"the connection to the engine at {where} failed or was cut")
        return RemoteError(f"the request to the engine at {where} failed: {_quote(text)[:120]}")

    # -- streaming -----------------------------------------------------------------

    def stream(self, path: str, body: dict[str, Any]) -> EventStream:
        """POST `body` and read the answer as server-sent events (each `data:` line's JSON)."""
        resp = self._send("POST", path, body, stream=True, timeout=None)
        return EventStream(self, resp)


class EventStream:
    """The events of one streamed answer. `close()` (any thread) drops the connection: the server
    stops generating, and the reading thread ends with `closed` set."""

    def __init__(self, http: RemoteHTTP, resp: requests.Response) -> None:
        self._http = http
        self._resp = resp
        self.closed = False

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):  # closed under a read on another thread: the read ends either way
            self._resp.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for line in self._lines():
                if not line or line.startswith(b":"):
                    continue  # keep-alive comments and event separators
                if not line.startswith(b"data:"):
                    continue  # `event:`/`id:` fields: the data line carries what is needed
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    event = json.loads(data.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    raise RemoteError(f"the engine at {self._http.where} sent an event that is not JSON") from None
                if isinstance(event, dict) and "error" in event:
                    err = event["error"]
                    message = err.get("message", err) if isinstance(err, dict) else err
                    raise RemoteError(f"the engine at {self._http.where} failed mid-reply: {_quote(str(message))}")
                if isinstance(event, dict):
                    yield event
        finally:
            self.close()

    def _lines(self) -> Iterator[bytes]:
        buf = b""
        raw = self._resp.raw
        try:
            while True:
                # What has arrived, without waiting for more: an event stream that is neither
                # chunked nor sized (HTTP/1.0, some proxies) ends only when the server closes it.
                chunk = raw.read1(64 << 10)
                if not chunk or self.closed:
                    break
                buf += chunk
                while True:
                    cut = buf.find(b"\n")
                    if cut < 0:
                        break
                    line, buf = buf[:cut].rstrip(b"\r"), buf[cut + 1 :]
                    if len(line) > MAX_EVENT_BYTES:
                        raise RemoteError(f"the engine at {self._http.where} sent an event over 1 MiB")
                    yield line
                if len(buf) > MAX_EVENT_BYTES:
                    raise RemoteError(f"the engine at {self._http.where} sent an event over 1 MiB")
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
            if self.closed:
                return
            raise RemoteError(
                f"the engine at {self._http.where} stopped answering (nothing for {self._http.read_timeout:g} s)"
            ) from None
        except requests.RequestException as exc:
            if self.closed:
                return
            raise self._http._fault(exc) from None
        except (urllib3.exceptions.HTTPError, AttributeError, OSError, ValueError):
            if self.closed:  # the response was closed under the reading thread (a stop)
                return
            raise RemoteError(f"the connection to the engine at {self._http.where} was cut") from None
        if buf.strip():
            yield buf.rstrip(b"\r")
