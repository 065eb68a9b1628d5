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
compressed answer is decoded anyway (http_decode.py). HTTPS_PROXY/HTTP_PROXY/NO_PROXY are honoured
(http_proxy.py).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import NamedTuple
from urllib.parse import urlsplit

import httptools

from .http_decode import Decoder, decoder
from .http_proxy import Proxies, Proxy, tunnel

IDLE_REUSE_S = 4.0  # servers commonly close idle keep-alive connections after 5 s (uvicorn, vLLM)
MAX_IDLE = 256  # idle connections kept per origin
MAX_CONNECTIONS = 256  # open connections per origin; more requests wait for one
PAUSE_AT = 1 << 20  # stop reading from the upstream while this much of a stream waits unread
MAX_HEAD = 64 * 1024  # bytes of an answer's status line and headers (h11 allows 100 KiB, aiohttp 8 KiB a line)
_WATCHED = frozenset((b"content-length", b"transfer-encoding", b"content-encoding", b"location", b"retry-after"))


class HTTPClientError(Exception):
    """The exchange with the upstream failed below HTTP."""


class ConnectFailed(HTTPClientError):
    pass


class Timeout(HTTPClientError):
    pass


class Disconnected(HTTPClientError):
    pass


class BadResponse(HTTPClientError):
    """Not a usable HTTP answer; the message says why and may be shown to the caller."""


class Redirected(HTTPClientError):
    """The upstream answered 3xx. Requests are not re-sent elsewhere: the message names where to."""

    def __init__(self, status: int, location: str | None):
        super().__init__(f"upstream answered HTTP {status} with a redirect to {location or '(no Location)'}")
        self.status = status
        self.location = location


class _Exchange:
    """One request's answer as it arrives: the status once the headers are in, body parts, the end
    or an error. The one task waiting on it is woken at each step."""

    __slots__ = ("conn", "streamed", "status", "retry_after", "parts", "buffered", "done", "error", "received",
                 "_waiter", "_timer")

    def __init__(self, conn: _Connection, *, streamed: bool):
        self.conn = conn
        self.streamed = streamed  # read as it comes: reading pauses while much waits unread
        self.status = 0
        self.retry_after: str | None = None  # the answer's Retry-After header, as sent
        self.parts: list[bytes] = []
        self.buffered = 0
        self.done = False
        self.error: HTTPClientError | None = None
        self.received = False  # any byte of the answer
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until something happens; raises the exchange's error if that is what happened."""
        if self.error is None:
            self._waiter = self.conn.loop.create_future()
            await self._waiter
        if self.error is not None:
            raise self.error

    def fail(self, error: HTTPClientError) -> None:
        if not self.done and self.error is None:
            self.error = error
            self.wake()

    def limit(self, seconds: float, *, idle: bool, since: float) -> None:
        """Fail with Timeout `seconds` after `since` (when the request was asked for), or (idle)
        after `seconds` without a byte."""
        self._timer = self.conn.loop.call_at(since + seconds, self._expire, seconds, idle)

    def _expire(self, seconds: float, idle: bool) -> None:
        self._timer = None
        if self.done or self.error is not None:
            return
        loop = self.conn.loop
        if idle and (quiet := loop.time() - self.conn.last_read) < seconds:
            self._timer = loop.call_at(loop.time() + seconds - quiet, self._expire, seconds, idle)
            return
        self.fail(Timeout(f"no {'data' if idle else 'complete answer'} from the upstream within {seconds:g} s"))
        self.conn.abort()

    async def body(self) -> bytes:
        """The rest of the answer, once it has all arrived."""
        while not self.done:
            await self.wait()
        return self.take()

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        self.buffered = 0
        if not self.done:  # a finished answer's connection was resumed when it went back to the pool
            self.conn.resume()
        return data

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """The caller is done with it: stop the timer; an unfinished answer costs the connection."""
        self.stop_timer()
        if not self.done:
            self.conn.abort()


class _Connection(asyncio.Protocol):
    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop):
        self.origin = origin
        self.loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.lost = False
        self.idle_since = 0.0
        self.last_read = 0.0
        self._paused = False
        self._delimited = False  # the answer has a Content-Length or is chunked
        self._interim = False  # the message being parsed is a 1xx, to skip
        self._encoding: bytes | None = None
        self._location: bytes | None = None
        self._decoder: Decoder | None = None
        self.head_bytes = 0  # received while the answer's head is incomplete
        self.holds_slot = False  # counted in its origin's connections until it closes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # nothing was asked: a server talking out of turn can't be trusted with the next request
            self.abort()
            return
        self.last_read = self.loop.time()
        ex.received = True
        if not ex.status:
            self.head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            ex.fail(BadResponse(f"upstream answered with invalid HTTP ({exc})"))
            self.abort()
            return
        if not ex.status and self.head_bytes > MAX_HEAD and not self.lost:
            ex.fail(BadResponse(f"upstream answer's headers exceed {MAX_HEAD // 1024} KiB"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost:
            self.lost = True
            self.origin.closed(self)
        ex, self.exchange = self.exchange, None
        if ex is None:
            return
        if exc is None and ex.status and not self._delimited:
            self.exchange = ex  # a body without length or chunks ends when the server closes
            self.on_message_complete()
            return
        ex.fail(Disconnected(f"upstream closed the connection{f' ({exc})' if exc else ''}"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._delimited = False
        self._encoding = self._location = None

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _WATCHED:
            if name == b"content-encoding":
                self._encoding = value
            elif name == b"location":
                self._location = value
            elif name == b"retry-after":
                if self.exchange is not None:
                    self.exchange.retry_after = value.decode("latin-1")
            else:
                self._delimited = True

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is None:
            return
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: the answer is still to come
            self._interim = True
            return
        self._decoder = None
        if self._encoding is not None:
            try:
                self._decoder = decoder(self._encoding)
            except ValueError as exc:
                ex.fail(BadResponse(str(exc)))
                self.abort()
                return
        ex.status = status
        ex.wake()

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            if self._decoder is not None and not (body := self._decode(body)):
                return
            ex.parts.append(body)
            ex.buffered += len(body)
            if ex.streamed and ex.buffered > PAUSE_AT and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            ex.wake()

    def _decode(self, body: bytes, *, end: bool = False) -> bytes:
        try:
            return self._decoder.flush() if end else self._decoder.decompress(body)  # type: ignore[union-attr]
        except Exception as exc:  # zlib.error, brotli.error, zstd.ZstdError: all just "corrupt"
            if self.exchange is not None:
                self.exchange.fail(BadResponse(f"upstream body could not be decoded "
                                               f"({self._encoding!r}: {exc})"))
            self.abort()
            return b""

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._decoder is not None and self.exchange is not None and (tail := self._decode(b"", end=True)):
            self.exchange.parts.append(tail)
            self.exchange.buffered += len(tail)
        ex, self.exchange = self.exchange, None
        if ex is None:
            return
        ex.done = True
        ex.stop_timer()
        ex.wake()
        if self._parser.should_keep_alive() and not self.lost:
            self.resume()
            self.origin.release(self)
        else:
            self.abort()

    def location(self) -> str | None:
        return None if self._location is None else self._location.decode("latin-1")

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if not self.lost:
            self.lost = True
            self.exchange = None
            self.origin.closed(self)
            if self.transport is not None:
                self.transport.abort()


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
        self._idle: deque[_Connection] = deque()
        self._max = max_connections
        self._open = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future[None]] = deque()  # requests waiting for one

    def request_head(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        """The request line and headers up to `Content-Length: ` (the caller appends the length,
        a blank line and the body)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}", "User-Agent: keystile",
                 "Accept-Encoding: identity"]
        if self.proxy is not None and not self.https:  # a forward proxy is sent the absolute URL
            lines[0] = f"{method} http://{self.host_header}{path} HTTP/1.1"
            if self.proxy.authorization:
                lines.append(f"Proxy-Authorization: {self.proxy.authorization}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")

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

    async def _start(self, head: bytes, body: bytes, timeout: float, *, idle: bool) -> _Exchange:
        request = b"%s%d\r\n\r\n%s" % (head, len(body), body)
        since = asyncio.get_running_loop().time()  # waiting for a connection counts in the time limit
        for attempt in (1, 2):
            conn, reused = await self._connection(since + timeout)
            ex = conn.exchange = _Exchange(conn, streamed=idle)
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

    async def _connection(self, deadline: float) -> tuple[_Connection, bool]:
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

    async def _dial(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        make = lambda: _Connection(self, loop)  # noqa: E731
        if self.proxy is None:
            _, conn = await loop.create_connection(make, self.host, self.port, ssl=self._ssl)
        elif self._ssl is None:  # plain HTTP through a forward proxy: the proxy is the peer
            _, conn = await loop.create_connection(make, self.proxy.host, self.proxy.port)
        else:
            conn = await tunnel(loop, make, self.proxy, self.host, self.port, self._ssl)
        return conn  # type: ignore[return-value]

    def release(self, conn: _Connection) -> None:
        conn.idle_since = conn.loop.time()
        if len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
            self._wake()
        else:
            conn.abort()

    def closed(self, conn: _Connection) -> None:
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

    def __init__(self, exchange: _Exchange):
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
                 max_connections: int = MAX_CONNECTIONS, trust_env: bool = True):
        """`trust_env`: take proxies from HTTPS_PROXY/HTTP_PROXY/NO_PROXY, read now (a ValueError
        for a proxy that is not http://)."""
        self._origins: dict[str, Origin] = {}
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._proxies = Proxies() if trust_env else None

    def get(self, base_url: str) -> Origin:
        url = urlsplit(base_url)
        key = f"{url.scheme}://{url.netloc}"
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = Origin(key, connect_timeout=self._connect_timeout,
                                                 ssl_context=self._ssl_context, max_connections=self._max_connections,
                                                 proxies=self._proxies)
        return origin

    async def aclose(self) -> None:
        for origin in self._origins.values():
            origin.close()
        self._origins.clear()
