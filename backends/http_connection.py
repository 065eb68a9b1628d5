"""One upstream connection and the answer being read on it: the asyncio protocol that feeds
httptools and decodes the body, the exchange a request waits on, and the client's errors.
The pool of these connections per origin is http.py."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from .http_decode import Decoder, decoder

if TYPE_CHECKING:
    from .http import Origin

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


class Exchange:
    """One request's answer as it arrives: the status once the headers are in, body parts, the end
    or an error. The one task waiting on it is woken at each step."""

    __slots__ = ("conn", "streamed", "status", "retry_after", "parts", "buffered", "done", "error", "received",
                 "_waiter", "_timer")

    def __init__(self, conn: Connection, *, streamed: bool):
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


class Connection(asyncio.Protocol):
    def __init__(self, origin: Origin, loop: asyncio.AbstractEventLoop):
        self.origin = origin
        self.loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
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
        self._head_size = 0  # the headers parsed so far of the message being parsed
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
        self._head_size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
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
        if self._head_size > MAX_HEAD:  # a whole oversized head in one read
            ex.fail(BadResponse(f"upstream answer's headers exceed {MAX_HEAD // 1024} KiB"))
            self.abort()
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
                coding = (self._encoding or b"").decode("latin-1")
                self.exchange.fail(BadResponse(f"upstream body could not be decoded ({coding!r}: {exc})"))
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
