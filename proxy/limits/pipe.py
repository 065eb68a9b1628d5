"""One Redis connection, auto-pipelined: every command issued in the same event-loop turn goes out
in one write, and replies (parsed by hiredis) resolve the callers' futures in order.

The limiter sends one script call per request on this path and nothing else. redis-py's asyncio
client costs about 65 µs of CPU per command here (pool checkout, a lock and a reader task per
command, response callbacks); this costs a few µs, and concurrent requests share their syscalls.

Failures are redis-py's exception types, so callers treat both alike: ConnectionError when the
connection cannot be made or is lost (every command in flight fails with it; the next call
reconnects), TimeoutError when Redis answers nothing for `timeout` seconds while commands wait
(the connection is then dropped), and for an error reply the class redis-py's parser gives its
kind: BusyLoadingError (LOADING), ReadOnlyError (READONLY), MasterDownError, ClusterDownError,
TryAgainError, NoScriptError, AuthenticationError, ... else ResponseError. The message keeps the
kind's word (`LOADING Redis is loading ...`).

The URL is read by redis-py's parse_url: user and password (AUTH), the database (SELECT), and for
rediss:// the ssl_* query options (ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile,
ssl_check_hostname), turned into an SSL context by redis-py itself, so this connection verifies
exactly as the redis-py client Keystile uses for invalidation does. Redis Cluster is not spoken
(no MOVED/ASK redirection): point REDIS_URL at a single primary (or a proxy in front of a cluster).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import (AuthenticationError, BusyLoadingError, ClusterDownError, ConnectionError,
                              MasterDownError, NoPermissionError, NoScriptError, ReadOnlyError, RedisError,
                              ResponseError, TimeoutError, TryAgainError)

# An error reply's first word -> redis-py's class for it (what its own parser raises).
ERROR_KINDS: dict[str, type[RedisError]] = {
    "LOADING": BusyLoadingError, "READONLY": ReadOnlyError, "MASTERDOWN": MasterDownError,
    "CLUSTERDOWN": ClusterDownError, "TRYAGAIN": TryAgainError, "NOSCRIPT": NoScriptError,
    "NOAUTH": AuthenticationError, "WRONGPASS": AuthenticationError, "NOPERM": NoPermissionError,
}


def reply_error(message: str) -> RedisError:
    """An error reply as the exception of its kind, message whole."""
    return ERROR_KINDS.get(message.split(" ", 1)[0], ResponseError)(message)


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float):
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader(replyError=reply_error)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._replies = 0  # progress counter for the watchdog
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost: Exception | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self._replies += 1
            future = self._waiting.popleft()
            if future.done():
                continue  # its caller was cancelled
            if isinstance(reply, RedisError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = ConnectionError(f"connection to redis lost: {exc or 'closed by the server'}")
        if self._watchdog is not None:
            self._watchdog.cancel()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)

    # -- commands ------------------------------------------------------------------------

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(hiredis.pack_command(args))
        future = self._loop.create_future()
        self._waiting.append(future)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._timeout, self._check, self._replies)
        return future

    def _flush(self) -> None:
        if self._transport is not None and self.lost is None:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def _check(self, replies_before: int) -> None:
        """Every `timeout` s while commands wait: no reply since the last look means Redis is stuck."""
        self._watchdog = None
        if not self._waiting:
            return
        if self._replies == replies_before:
            self.close(TimeoutError(f"redis sent no reply for {self._timeout:g} s"))
            return
        self._watchdog = self._loop.call_later(self._timeout, self._check, self._replies)

    def close(self, reason: Exception | None = None) -> None:
        if self.lost is None:
            self.lost = reason or ConnectionError("connection to redis closed")
        if self._transport is not None:
            self._transport.abort()
        self.connection_lost(None)


class RedisPipe:
    """Lazily connected; `call` awaits a reply, `submit` only queues the command (its future
    resolves later), for work nobody needs to wait for."""

    def __init__(self, url: str, *, timeout: float = 1.0, connect_timeout: float = 0.5):
        options = parse_url(url)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._path: str | None = options.get("path")
        self._host: str = options.get("host", "localhost")
        self._port: int = int(options.get("port", 6379))
        self._ssl: ssl.SSLContext | None = None
        if options.get("connection_class") is SSLConnection:
            ssl_options = {k: v for k, v in options.items() if k.startswith("ssl_")}
            self._ssl = SSLConnection(host=self._host, port=self._port, **ssl_options).ssl_context.get()
        self._unix = options.get("connection_class") is UnixDomainSocketConnection
        self._setup: list[tuple[Any, ...]] = []
        password, username = options.get("password"), options.get("username")
        if password:
            self._setup.append(("AUTH", username, password) if username else ("AUTH", password))
        if options.get("db"):
            self._setup.append(("SELECT", int(options["db"])))
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    def script(self, source: str) -> Callable[[list[str], list[Any]], tuple[Any, ...]]:
        """Load the Lua `source` on every (re)connect; returns what builds its EVALSHA command."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        self._setup.append(("SCRIPT", "LOAD", source))
        return lambda keys, args: ("EVALSHA", sha, len(keys), *keys, *args)

    async def call(self, *args: Any) -> Any:
        return await (await self.submit(*args))

    async def submit(self, *args: Any) -> asyncio.Future[Any]:
        conn = self._conn
        if conn is None or conn.lost is not None:
            conn = await self._connect()
        return conn.send(args)

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _connect(self) -> _Connection:
        # One attempt at a time, shared by every caller that finds the connection down.
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        make = lambda: _Connection(loop, self._timeout)  # noqa: E731
        try:
            if self._unix:
                opening = loop.create_unix_connection(make, self._path)
            else:
                opening = loop.create_connection(make, self._host, self._port, ssl=self._ssl)
            _, conn = await asyncio.wait_for(opening, self._connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectionError(f"cannot connect to redis at {self._where()}: {exc or type(exc).__name__}") from exc
        try:
            for command in self._setup:
                await conn.send(command)
        except BaseException:  # e.g. LOADING or WRONGPASS: this connection is no use
            conn.close()
            raise
        self._conn = conn
        return conn

    def _where(self) -> str:
        return self._path if self._unix else f"{self._host}:{self._port}"
