"""The HTTP server's own limits: uvicorn's httptools protocol with a cap on a request's head and
time limits for slow senders, and every refusal in the error envelope.

uvicorn (0.30+) has neither for httptools: a client could send a 16 MiB header (httptools buffers
it whole) or hold a connection open forever with half a request. Keystile listens on its own as
often as behind nginx, so this holds without nginx:

- the request line and headers may take `max_header_bytes` (default 64 KiB); more gets 431 and
  the connection closed. A head still incomplete is measured as received (so no more than one
  read past the cap is buffered), a head complete in one read by its parsed size;
- a request's head must arrive within `header_timeout` seconds of its first byte (of the
  connection, for the first request), else 408 and close;
- a request body may pause at most `body_timeout` seconds between two reads (not counted while
  the gateway itself is not reading it), else the connection is closed and the request ends as a
  client disconnect;
- malformed HTTP gets 400 in the envelope instead of uvicorn's plain text.

A refused connection is closed the way nginx's lingering close does it: the answer, then our
side of the connection shut (FIN), then whatever the client still sends is read and dropped for up
to LINGER_S before the socket closes, so a client still sending its oversized head reads the 431
instead of a reset.

The usual request, whose head and body arrive in one read, arms no timer: timers are armed only
when a read leaves a head or a body incomplete.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .errors import BadRequest, HeadersTooLarge, KeystileError, RequestTimedOut, error_body

LINGER_S = 2.0


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request already refused."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above."""

    def __init__(self, *args: Any, limits: ServerLimits, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._in_head = True  # the next bytes belong to a request's head
        self._in_body = False  # a request's head is in, its body is not
        self._head_bytes = 0
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False  # answered with an error: the rest of what arrives is dropped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer = self.loop.call_later(self._limits.header_timeout, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if self._in_head:
            if self._head_bytes > self._limits.max_header_bytes:
                self._refuse(self._too_large())
            elif self._timer is None and self._head_bytes:
                self._timer = self.loop.call_later(self._limits.header_timeout, self._head_late)
        elif self._in_body:
            self._last_read = self.loop.time()
            if self._timer is None:
                self._timer = self.loop.call_later(self._limits.body_timeout, self._body_late)

    def on_headers_complete(self) -> None:
        if self._head_bytes > self._limits.max_header_bytes and self._head_size() > self._limits.max_header_bytes:
            self._refuse(self._too_large())  # a whole oversized head in one read: the app never sees it
            raise _Refused  # stops the parser; uvicorn's handler of parser errors finds it answered
        self._in_head, self._in_body, self._head_bytes = False, True, 0
        self._stop_timer()
        super().on_headers_complete()

    def _head_size(self) -> int:
        """The head just parsed, in bytes (about: the request line's method and version left out)."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(f"request line and headers exceed {self._limits.max_header_bytes} bytes")

    def on_message_complete(self) -> None:
        self._in_head, self._in_body = True, False
        self._stop_timer()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # else: a refusal stopped the parser, and has been answered
            self._refuse(BadRequest(f"malformed HTTP request: {msg}", code="invalid_http"))

    def _refuse(self, error: KeystileError) -> None:
        """Answer with `error` and close (lingering), unless an answer is on its way (pipelining):
        then just close."""
        self._stop_timer()
        self._refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()
            return
        body = error_body(error)
        self.transport.write(b"".join([
            STATUS_LINE[error.status], *(b"%s: %s\r\n" % kv for kv in self.server_state.default_headers),
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body),
            body]))
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_late(self) -> None:
        self._timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(RequestTimedOut(f"request headers not received within {self._limits.header_timeout:g} s"))

    def _body_late(self) -> None:
        self._timer = None
        if not self._in_body or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the gateway is not reading: not the sender's delay
            self._last_read = self.loop.time()
        quiet = self.loop.time() - self._last_read
        if quiet < self._limits.body_timeout:
            self._timer = self.loop.call_later(self._limits.body_timeout - quiet, self._body_late)
            return
        self.transport.close()  # the request in progress sees a client disconnect


def protocol(limits: ServerLimits) -> partial[LimitedHttpToolsProtocol]:
    """What uvicorn's `http=` takes: a protocol factory bound to these limits (picklable, for workers)."""
    return partial(LimitedHttpToolsProtocol, limits=limits)
