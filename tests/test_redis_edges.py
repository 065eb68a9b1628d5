"""The limiter's Redis connection (proxy/limits/pipe.py) against what a real deployment throws at
it (issue 11): error replies that mean "Redis cannot count now" (from a small RESP server that
answers with them), a redis-server of our own with a password and an ACL user, and one with TLS."""

from __future__ import annotations

import asyncio
import hashlib

import hiredis
import pytest
from redis.asyncio import Redis
from redis.exceptions import (AuthenticationError, BusyLoadingError, ClusterDownError, ConnectionError,
                              MasterDownError, ReadOnlyError, ResponseError, TryAgainError)

from proxy.limits import LimitSpec, RedisLimiter, connect
from proxy.limits.pipe import RedisPipe

from .redis_server import OwnRedis
from .test_http_client import _self_signed

KINDS = {
    "LOADING": ("LOADING Redis is loading the dataset in memory", BusyLoadingError),
    "READONLY": ("READONLY You can't write against a read only replica.", ReadOnlyError),
    "MASTERDOWN": ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
                   MasterDownError),
    "CLUSTERDOWN": ("CLUSTERDOWN The cluster is down", ClusterDownError),
    "TRYAGAIN": ("TRYAGAIN Multiple keys request during rehashing of slot", TryAgainError),
}


class Refusing:
    """Speaks RESP: loads scripts (answers their SHA1) and answers every other command with
    `error` (None: +OK)."""

    def __init__(self, error: str | None):
        self.error = error
        self.commands: list[bytes] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Refusing:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                self.commands.append(command[0].upper())
                if command[:2] == [b"SCRIPT", b"LOAD"]:
                    sha = hashlib.sha1(command[2]).hexdigest().encode()
                    writer.write(b"$40\r\n%s\r\n" % sha)
                elif self.error is None:
                    writer.write(b"+OK\r\n")
                else:
                    writer.write(f"-{self.error}\r\n".encode())
        writer.close()


@pytest.mark.parametrize("kind", list(KINDS))
async def test_error_replies_keep_their_kind_and_send_the_limiter_to_its_fallback(kind, caplog):
    message, error = KINDS[kind]
    async with Refusing(message) as server:
        pipe = RedisPipe(server.url)
        with pytest.raises(error, match=f"^{kind} "):
            await pipe.call("GET", "k")
        await pipe.aclose()

        limiter = RedisLimiter(connect(server.url), prefix="edge", probe_interval=0.1)
        spec = [LimitSpec("key:e", rpm=100)]
        lease = await limiter.acquire(spec)  # a 500 before: the error reached the request
        assert not limiter.shared and lease.owner is not limiter
        assert any("redis unreachable" in r.getMessage() and kind in r.getMessage() for r in caplog.records)
        await limiter.release(lease, tokens_used=0, cost=0.0)
        await asyncio.sleep(0.15)
        await limiter.acquire(spec)  # starts the probe: a write, refused the same way
        await asyncio.sleep(0.1)
        assert not limiter.shared and server.commands.count(b"SET") >= 1

        server.error = None  # Redis recovers: the next probe finds out
        await asyncio.sleep(0.15)
        await limiter.acquire(spec)
        for _ in range(20):
            if limiter.shared:
                break
            await asyncio.sleep(0.05)
        assert limiter.shared
        await limiter.aclose()


async def test_other_error_replies_stay_errors():
    async with Refusing("WRONGTYPE Operation against a key holding the wrong kind of value") as server:
        pipe = RedisPipe(server.url)
        with pytest.raises(ResponseError, match="^WRONGTYPE"):
            await pipe.call("GET", "k")
        await pipe.aclose()


async def test_auth_with_password_and_with_acl_user_from_the_url():
    own = OwnRedis("--requirepass", "default-secret",
                   "--user", "alice", "on", ">alice secret", "~*", "&*", "+@all").start()
    try:
        base = f"127.0.0.1:{own.port}/0"
        for url in (f"redis://:default-secret@{base}", f"redis://alice:alice%20secret@{base}"):
            pipe = RedisPipe(url)
            assert await pipe.call("SET", "k", url) == b"OK"
            assert await pipe.call("ACL", "WHOAMI") == (b"alice" if "alice" in url else b"default")
            await pipe.aclose()
        for url in (f"redis://alice:wrong@{base}", f"redis://{base}"):
            pipe = RedisPipe(url)
            with pytest.raises(AuthenticationError):
                await pipe.call("GET", "k")
            await pipe.aclose()
        limiter = RedisLimiter(connect(f"redis://alice:alice%20secret@{base}"), prefix="auth")
        lease = await limiter.acquire([LimitSpec("key:a", rpm=5)])
        assert lease.owner is limiter and limiter.shared
        await limiter.release(lease, tokens_used=0, cost=0.0)
        await limiter.aclose()
    finally:
        own.stop()


async def test_rediss_honours_ssl_cert_reqs_and_ssl_ca_certs_like_redis_py(tmp_path):
    _self_signed(tmp_path)
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    own = OwnRedis(tls=(cert, key)).start()
    try:
        base = f"rediss://localhost:{own.port}/0"
        for url, works in ((f"{base}?ssl_ca_certs={cert}", True), (f"{base}?ssl_cert_reqs=none", True),
                           (base, False), (f"{base}?ssl_cert_reqs=required", False)):
            pipe, client = RedisPipe(url), Redis.from_url(url)
            if works:
                assert await pipe.call("PING") == b"PONG", url
                assert await client.ping()
            else:
                with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                    await pipe.call("PING")
                with pytest.raises(ConnectionError):
                    await client.ping()
            await pipe.aclose()
            await client.aclose()
    finally:
        own.stop()


async def test_a_real_replica_sends_the_limiter_to_its_fallback_until_it_is_promoted(caplog):
    """A failover seen from the limiter: its Redis is (still, or again) a replica whose primary is
    gone. READONLY, then MASTERDOWN once stale reads are off; promoted, it counts again."""
    own = OwnRedis("--replicaof", "127.0.0.1", "1").start()  # nothing listens on port 1: the link stays down
    admin = Redis.from_url(own.url)
    try:
        limiter = RedisLimiter(connect(own.url), prefix="replica", probe_interval=0.1)
        spec = [LimitSpec("key:r", rpm=100)]
        assert (await limiter.acquire(spec)).owner is not limiter and not limiter.shared
        assert any("ReadOnlyError" in r.getMessage() for r in caplog.records)

        await admin.config_set("replica-serve-stale-data", "no")
        await asyncio.sleep(0.15)
        await limiter.acquire(spec)  # the probe's write is refused: MASTERDOWN now
        await asyncio.sleep(0.1)
        assert not limiter.shared

        await admin.execute_command("REPLICAOF", "NO", "ONE")  # promoted
        for _ in range(40):
            await asyncio.sleep(0.05)
            await limiter.acquire(spec)
            if limiter.shared:
                break
        assert limiter.shared and (await limiter.acquire(spec)).owner is limiter
        await limiter.aclose()
    finally:
        await admin.aclose()
        own.stop()
