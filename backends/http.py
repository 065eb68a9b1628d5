"""The upstream HTTP/1.1 client: keep-alive connections pooled per origin, on asyncio protocols,
responses parsed by httptools (uvicorn's parser, in C). It does what a relay needs and no more:
send a prepared request, read the answer whole (with a deadline) or chunk by chunk as it arrives
(with an idle limit). aiohttp's client, which this replaced, spent about 60 µs of CPU per request
here; this spends about 15 (bench/README.md).

Failures are HTTPClientError subclasses: ConnectFailed, Timeout, Disconnected (the connection
ended before the response did), BadResponse (not HTTP, headers over MAX_HEAD, a body that cannot
be decoded), Redirected (a 3xx: a relay does not follow redirects, the operator fixes api_base).
A reused keep-alive connection that the server closed before sending a byte of the answer (it
timed out the idle connection while the request was on its way) is retried once on a new
connection; connections idle for longer than IDLE_REUSE_S are not reused at all, which keeps that
race rare. A body with neither a Content-Length nor chunks ends when the server closes the
connection (HTTP/1.0 style). Interim 1xx answers (100 Continue, 103 Early Hints) are skipped.

A request's time limit starts when it is asked for: waiting for a free connection (at
max_connections) and connecting count inside it. Requests carry `Accept-Encoding: identity`; a
compressed answer is decoded anyway (http_decode.py). HTTPS_PROXY/HTTP_PROXY/NO_PROXY are honoured,
with http://, https:// and socks5(h):// proxies (http_proxy.py). A pool told to
(`send_context_headers`: traces) adds to each request the header lines of the context it is sent
from. This module is the pool; one connection and the answer read on it are http_connection.py.
`backend_error` is what a backend raises for the client's failures.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple
from urllib.parse import urlsplit

from . import errors
from .http_connection import (BadResponse, ConnectFailed, Connection, Disconnected, Exchange, HTTPClientError,
                              Redirected, Timeout)
from .http_proxy import Proxies, Proxy, connect

__all__ = ["Answer", "BadResponse", "ClientPool", "ConnectFailed", "Disconnected", "HTTPClientError", "Origin",
           "Redirected", "Response", "Timeout", "backend_error"]

IDLE_REUSE_S = 4.0  # servers commonly close idle keep-alive connections after 5 s (uvicorn, vLLM)
MAX_IDLE = 256  # idle connections kept per origin
MAX_CONNECTIONS = 256  # open connections per origin; more requests wait for one
CONTENT_LENGTH = b"Content-Length: "  # what a request head ends with
ContextHeaders = Callable[[], bytes | None]
"""Header lines (each ending in CRLF) that a request sent from the current context also carries, or None."""


def backend_error(exc: HTTPClientError, upstream: str, *, streaming: bool = False) -> errors.BackendError:
    """What a backend raises for `exc`, the client's failure talking to `upstream` (a deployment's
    public name), `streaming` once a stream was asked for: a Timeout is an UpstreamTimeout; an answer
    that is not one (a redirect, headers too large, invalid HTTP or encoding) a 502 that says what was
    wrong, since the operator has to fix it (e.g. api_base); anything else an UpstreamUnreachable."""
    if isinstance(exc, Timeout):
        return errors.UpstreamTimeout(f"upstream {upstream} {'stopped sending' if streaming else 'timed out'}")
    if isinstance(exc, (BadResponse, Redirected)):
        return errors.UpstreamHTTPError(f"upstream {upstream}: {exc}", status=502)
    what = "dropped the stream" if streaming else "unreachable"
    return errors.UpstreamUnreachable(f"upstream {upstream} {what}: {type(exc).__name__}")


class Origin:
    """Pooled connections to one scheme://host:port."""

    def __init__(self, base_url: str, *, connect_timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None,
                 max_connections: int = MAX_CONNECTIONS, proxies: Proxies | None = None):
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.https = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port or (443 if self.https else 80)
        self.host_header = url.netloc.rsplit("@", 1)[-1]
        self.proxy: Proxy | None = proxies.for_origin(url.scheme, self.host, self.port) if proxies else None
        self._ssl = (ssl_context or ssl.create_default_context()) if self.https else None
        self._connect_timeout = connect_timeout
        self._idle: deque[Connection] = deque()
        self._max = max_connections
        self._open = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future[None]] = deque()  # requests waiting for one
        self.context_headers: ContextHeaders | None = None  # ClientPool.send_context_headers

    def request_head(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        """The request line and headers up to `Content-Length: ` (the caller appends the length,
        a blank line and the body)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}", "User-Agent: keystile",
                 "Accept-Encoding: identity"]
        if self.proxy is not None and self.proxy.forwards(self.https):  # sent the absolute URL
            lines[0] = f"{method} http://{self.host_header}{path} HTTP/1.1"
            if self.proxy.authorization:
                lines.append(f"Proxy-Authorization: {self.proxy.authorization}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n").encode("latin-1") + CONTENT_LENGTH

    async def fetch(self, head: bytes, body: bytes, timeout: float) -> tuple[int, bytes]:
        """Send the request; the status and whole body, all within `timeout` seconds."""
        answer = await self.exchange(head, body, timeout)
        return answer.status, answer.body

    async def exchange(self, head: bytes, body: bytes, timeout: float) -> Answer:
        """`fetch` with the headers a caller acts on (Retry-After)."""
        ex = await self._start(head, body, timeout, idle=False)
        try:
            return Answer(ex.status, await ex.body(), ex.retry_after)
        finally:
            ex.close()

    async def open(self, head: bytes, body: bytes, idle_timeout: float) -> Response:
        """Send the request; return once the answer's headers are in, to read its body as it comes."""
        return Response(await self._start(head, body, idle_timeout, idle=True))

    async def _start(self, head: bytes, body: bytes, timeout: float, *, idle: bool) -> Exchange:
        if self.context_headers is not None and (lines := self.context_headers()):
            head = head[:-len(CONTENT_LENGTH)] + lines + CONTENT_LENGTH
        request = b"%s%d\r\n\r\n%s" % (head, len(body), body)
        since = asyncio.get_running_loop().time()  # waiting for a connection counts in the time limit
        for attempt in (1, 2):
            conn, reused = await self._connection(since + timeout)
            ex = conn.exchange = Exchange(conn, streamed=idle)
            ex.limit(timeout, idle=idle, since=since)
            conn.last_read = since
            conn.head_bytes = 0
            conn.transport.write(request)  # type: ignore[union-attr]
            try:
                while ex.status == 0:
                    await ex.wait()
                if 300 <= ex.status < 400:
                    raise Redirected(ex.status, conn.location())
                return ex
            except Disconnected:
                ex.close()
                if reused and not ex.received and attempt == 1:
                    continue  # the server had closed it while the request was on its way
                raise
            except BaseException:
                ex.close()
                raise
        raise AssertionError("unreachable")

    async def _connection(self, deadline: float) -> tuple[Connection, bool]:
        """An idle connection, else a new one; at `max_connections`, wait for either, until `deadline`."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._idle:
                conn = self._idle.pop()
                if not conn.lost and now - conn.idle_since < IDLE_REUSE_S:
                    return conn, True
                conn.abort()
            if self._open < self._max:
                break
            await self._wait_turn(loop, deadline)
        self._open += 1
        budget = min(self._connect_timeout, deadline - loop.time())
        try:
            conn = await asyncio.wait_for(self._dial(loop), budget)
        except BaseException as exc:
            self._open -= 1
            self._wake()
            if isinstance(exc, asyncio.TimeoutError) and budget < self._connect_timeout:
                raise Timeout(f"no connection to {self.host}:{self.port} within the request's time limit") from exc
            if isinstance(exc, (OSError, asyncio.TimeoutError)):
                via = f" via proxy {self.proxy.where}" if self.proxy else ""
                raise ConnectFailed(f"cannot connect to {self.host}:{self.port}{via} "
                                    f"({exc or type(exc).__name__})") from exc
            raise
        conn.holds_slot = True
        if conn.lost:  # closed by the server before this task got to it
            self.closed(conn)
            raise ConnectFailed(f"{self.host}:{self.port} closed the connection as soon as it opened")
        return conn, False

    async def _wait_turn(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Until a connection frees up; Timeout at `deadline`."""
        waiter = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_at(deadline, self._expire_wait, waiter)
        try:
            await waiter
        except Timeout:
            self._waiters.remove(waiter)
            raise
        except asyncio.CancelledError:
            if waiter.cancelled():
                self._waiters.remove(waiter)
            else:
                self._wake()  # our turn came as we were cancelled: pass it on
            raise
        finally:
            timer.cancel()

    def _expire_wait(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(Timeout(f"all {self._max} connections to {self.host}:{self.port} stayed busy "
                                         "for the request's whole time limit"))

    async def _dial(self, loop: asyncio.AbstractEventLoop) -> Connection:
        make = lambda: Connection(self, loop)  # noqa: E731
        if self.proxy is None:
            _, conn = await loop.create_connection(make, self.host, self.port, ssl=self._ssl)
        else:
            conn = await connect(loop, make, self.proxy, self.host, self.port, self._ssl)
        return conn  # type: ignore[return-value]

    def release(self, conn: Connection) -> None:
        conn.idle_since = conn.loop.time()
        if len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
            self._wake()
        else:
            conn.abort()

    def closed(self, conn: Connection) -> None:
        """`conn` is gone: out of the idle list, and its slot to the next request waiting."""
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        if conn.holds_slot:
            conn.holds_slot = False
            self._open -= 1
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()


class Answer(NamedTuple):
    """A whole answer: status, body and its Retry-After header (None when absent)."""

    status: int
    body: bytes
    retry_after: str | None


class Response:
    """A streamed answer: `status`, then `chunks()` as they arrive; `close()` when done (an
    unfinished answer closes its connection)."""

    def __init__(self, exchange: Exchange):
        self._ex = exchange
        self.status = exchange.status
        self.retry_after = exchange.retry_after

    async def read(self) -> bytes:
        return await self._ex.body()

    async def chunks(self) -> AsyncIterator[bytes]:
        ex = self._ex
        while True:
            if ex.parts:
                yield ex.take()
            elif ex.done:
                return
            else:
                await ex.wait()

    def close(self) -> None:
        self._ex.close()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class ClientPool:
    """One Origin per scheme://host:port, shared by every deployment that calls it."""

    def __init__(self, *, connect_timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None,
                 max_connections: int = MAX_CONNECTIONS, trust_env: bool = True,
                 proxy_ssl_context: ssl.SSLContext | None = None):
        """`trust_env`: take proxies from HTTPS_PROXY/HTTP_PROXY/NO_PROXY, read now (a ValueError
        for a proxy URL of another kind); `proxy_ssl_context` verifies https:// proxies."""
        self._origins: dict[str, Origin] = {}
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._proxies = Proxies(tls=proxy_ssl_context) if trust_env else None
        self._context_headers: ContextHeaders | None = None

    def send_context_headers(self, lines: ContextHeaders) -> None:
        """From now on every request also carries the header lines `lines()` gives in the context it
        is sent from (traces: the upstream call's traceparent). Without this, requests are as they were."""
        self._context_headers = lines
        for origin in self._origins.values():
            origin.context_headers = lines

    def get(self, base_url: str) -> Origin:
        url = urlsplit(base_url)
        key = f"{url.scheme}://{url.netloc}"
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = Origin(key, connect_timeout=self._connect_timeout,
                                                 ssl_context=self._ssl_context, max_connections=self._max_connections,
                                                 proxies=self._proxies)
            origin.context_headers = self._context_headers
        return origin

    async def aclose(self) -> None:
        for origin in self._origins.values():
            origin.close()
        self._origins.clear()
