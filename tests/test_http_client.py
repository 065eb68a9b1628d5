"""The upstream HTTP/1.1 client (backends/http.py) against small real TCP servers that answer
well, badly, late or not at all."""

from __future__ import annotations

import asyncio
import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from backends.http import BadResponse, ClientPool, ConnectFailed, Disconnected, Timeout


class Server:
    """Reads each request (head + Content-Length body) and lets `answer(n, body, writer)` reply;
    counts connections and requests, and notices when a client hangs up."""

    def __init__(self, answer, ssl_context: ssl.SSLContext | None = None):
        self.answer = answer
        self.ssl = ssl_context
        self.connections = 0
        self.requests = 0
        self.hung_up = asyncio.Event()
        self.bodies: list[bytes] = []
        self.heads: list[bytes] = []

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.ssl else 'http'}://localhost:{port}/v1"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.reader = reader  # the latest connection's
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                body = await reader.readexactly(length)
                self.requests += 1
                self.heads.append(head)
                self.bodies.append(body)
                if await self.answer(self.requests, body, writer) is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hung_up.set()
        finally:
            writer.close()


def reply(body: bytes, *extra: str) -> bytes:
    head = "\r\n".join(["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}", *extra])
    return head.encode() + b"\r\n\r\n" + body


async def echo(n, body, writer):
    writer.write(reply(b'{"n":%d,"got":%s}' % (n, body)))


async def fetch(pool: ClientPool, url: str, body: bytes = b"{}", timeout: float = 5.0) -> tuple[int, bytes]:
    origin = pool.get(url)
    return await origin.fetch(origin.request_head("POST", "/v1/x", {"Content-Type": "application/json"}), body, timeout)


async def test_keep_alive_reuses_one_connection():
    async with Server(echo) as server:
        pool = ClientPool()
        for i in range(1, 6):
            assert await fetch(pool, server.url, b'"req%d"' % i) == (200, b'{"n":%d,"got":"req%d"}' % (i, i))
        assert server.connections == 1
        results = await asyncio.gather(*(fetch(pool, server.url) for _ in range(10)))
        assert all(status == 200 for status, _ in results) and server.connections == 10  # one each while busy
        await pool.aclose()


async def test_chunked_answer_and_request_head():
    async def chunked(n, body, writer):
        writer.write(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    async with Server(chunked) as server:
        pool = ClientPool()
        assert await fetch(pool, server.url) == (201, b"hello world")
        head = pool.get(server.url).request_head("POST", "/v1/x", {"Authorization": "Bearer k"})
        assert head.startswith(b"POST /v1/x HTTP/1.1\r\nHost: localhost:") and b"Authorization: Bearer k\r\n" in head
        await pool.aclose()


async def test_context_headers_go_on_every_request_once_asked_for():
    """`send_context_headers` (traces): the lines its function gives where a request is sent go with it,
    also through an origin made before; without it, and when the function gives None, the head is as built."""
    async with Server(echo) as server:
        pool = ClientPool()
        await fetch(pool, server.url, b'"0"')
        lines: list[bytes | None] = [b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n", None]
        pool.send_context_headers(lines.pop)
        assert await fetch(pool, server.url, b'"a"') == (200, b'{"n":2,"got":"a"}')
        assert await fetch(pool, server.url, b'"b"') == (200, b'{"n":3,"got":"b"}')
        plain, none, traced = server.heads
        assert none == plain and b"traceparent" not in plain
        assert traced == plain.replace(b"Content-Length: ", b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-"
                                                             b"b7ad6b7169203331-01\r\nContent-Length: ")
        await pool.aclose()


async def test_connection_close_is_not_reused():
    async def closing(n, body, writer):
        writer.write(reply(b"{}", "Connection: close"))
        return False

    async with Server(closing) as server:
        pool = ClientPool()
        for _ in range(3):
            assert (await fetch(pool, server.url))[0] == 200
        assert server.connections == 3
        await pool.aclose()


async def test_server_closing_a_kept_alive_connection_is_retried_once():
    async def close_second(n, body, writer):  # the 2nd request finds its connection closed unanswered
        if n in (2, 4):
            return False
        writer.write(reply(b'{"n":%d}' % n))

    async with Server(close_second) as server:
        pool = ClientPool()
        assert await fetch(pool, server.url) == (200, b'{"n":1}')
        assert await fetch(pool, server.url) == (200, b'{"n":3}')  # sent again on a new connection
        assert server.connections == 2
        await pool.aclose()
        with pytest.raises(Disconnected):  # on a new connection the same is an error: the server saw it
            await fetch(ClientPool(), server.url)
        assert server.requests == 4


async def test_close_mid_body_is_disconnected_not_retried():
    async def half(n, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\":")
        await writer.drain()
        return False

    async with Server(half) as server:
        pool = ClientPool()
        with pytest.raises(Disconnected):
            await fetch(pool, server.url)
        assert server.requests == 1
        await pool.aclose()


async def test_garbage_is_bad_response():
    async def garbage(n, body, writer):
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    async with Server(garbage) as server:
        pool = ClientPool()
        with pytest.raises(BadResponse):
            await fetch(pool, server.url)
        await pool.aclose()


async def test_deadline_and_hang_up_on_cancel():
    async def silent(n, body, writer):  # answers nothing; notices when the client hangs up
        for _ in range(1500):
            if server.reader.at_eof():
                server.hung_up.set()
                return False
            await asyncio.sleep(0.02)

    async with Server(silent) as server:
        pool = ClientPool()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Timeout):
            await fetch(pool, server.url, timeout=0.3)
        assert 0.3 <= loop.time() - started < 1.0
        await asyncio.wait_for(server.hung_up.wait(), 1.0)  # the timed-out connection is closed

        server.hung_up.clear()
        task = asyncio.create_task(fetch(pool, server.url))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.hung_up.wait(), 1.0)  # a cancelled call hangs up on the upstream
        await pool.aclose()


async def test_stream_chunks_as_they_come_and_idle_limit():
    async def trickle(n, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(4):
            writer.write(b"2\r\n%02d\r\n" % i)
            await writer.drain()
            await asyncio.sleep(0.15)  # below the idle limit each time, above it in all
        if n == 2:
            await asyncio.sleep(30)  # the second stream goes silent
        writer.write(b"0\r\n\r\n")

    async with Server(trickle) as server:
        pool = ClientPool()
        origin = pool.get(server.url)
        head = origin.request_head("POST", "/v1/x", {})
        async with await origin.open(head, b"{}", idle_timeout=0.4) as resp:
            assert resp.status == 200
            assert [c async for c in resp.chunks()] == [b"00", b"01", b"02", b"03"]
        got = []
        with pytest.raises(Timeout):
            async with await origin.open(head, b"{}", idle_timeout=0.4) as resp:
                async for chunk in resp.chunks():
                    got.append(chunk)
        assert got == [b"00", b"01", b"02", b"03"]
        await pool.aclose()


async def test_large_stream_read_slowly_arrives_whole():
    block = bytes(range(256)) * 4096  # 1 MiB a chunk, 4 of them: reading pauses and resumes

    async def big(n, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (4 * len(block)))
        for _ in range(4):
            writer.write(block)
            await writer.drain()

    async with Server(big) as server:
        pool = ClientPool()
        origin = pool.get(server.url)
        async with await origin.open(origin.request_head("GET", "/v1/big", {}), b"", idle_timeout=5) as resp:
            received = bytearray()
            async for chunk in resp.chunks():
                received += chunk
                await asyncio.sleep(0.01)
        assert received == block * 4
        await pool.aclose()


async def test_large_json_answer_is_read_whole():
    data = b'{"data":"' + b"x" * (5 << 20) + b'"}'  # 5 MiB: more than streams buffer before pausing

    async def big(n, body, writer):
        writer.write(reply(data))

    async with Server(big) as server:
        pool = ClientPool()
        assert await fetch(pool, server.url, timeout=10) == (200, data)
        await pool.aclose()


async def test_body_ending_with_the_connection():
    async def http10(n, body, writer):  # neither Content-Length nor chunks: the close ends the body
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"old":"style"}')
        await writer.drain()
        return False

    async with Server(http10) as server:
        pool = ClientPool()
        assert await fetch(pool, server.url) == (200, b'{"old":"style"}')
        assert await fetch(pool, server.url) == (200, b'{"old":"style"}')
        assert server.connections == 2
        await pool.aclose()


async def test_connections_per_origin_are_capped_and_waiting_requests_take_turns():
    open_now = peak = 0

    async def slow(n, body, writer):
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        await asyncio.sleep(0.05)
        open_now -= 1
        writer.write(reply(b'{"n":%d}' % n))

    async with Server(slow) as server:
        pool = ClientPool(max_connections=2)
        results = await asyncio.gather(*(fetch(pool, server.url) for _ in range(8)))
        assert [status for status, _ in results] == [200] * 8
        assert server.connections == 2 and peak == 2
        waiting = [asyncio.create_task(fetch(pool, server.url)) for _ in range(5)]
        await asyncio.sleep(0.01)
        for task in waiting[2:]:
            task.cancel()  # three give up while waiting for a connection
        done = await asyncio.gather(*waiting, return_exceptions=True)
        assert [r[0] for r in done[:2]] == [200, 200]
        assert all(isinstance(r, asyncio.CancelledError) for r in done[2:])
        assert [s for s, _ in await asyncio.gather(*(fetch(pool, server.url) for _ in range(4)))] == [200] * 4
        assert server.connections == 2
        await pool.aclose()


async def closed_port() -> int:
    """A local port nothing listens on (it did a moment ago)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def test_nothing_listening_is_connect_failed():
    port = await closed_port()
    with pytest.raises(ConnectFailed, match=f"127.0.0.1:{port}"):
        await fetch(ClientPool(), f"http://127.0.0.1:{port}/v1")


def _self_signed(tmp_path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return server, ssl.create_default_context(cafile=str(cert_file))


async def test_https_trusts_the_ca_bundle_named_by_ssl_cert_file(tmp_path, monkeypatch):
    server_ctx, _ = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))  # how an operator trusts a private CA
    async with Server(echo, ssl_context=server_ctx) as server:
        pool = ClientPool()
        assert await fetch(pool, server.url, b"1") == (200, b'{"n":1,"got":1}')
        await pool.aclose()


async def test_https(tmp_path):
    server_ctx, client_ctx = _self_signed(tmp_path)
    async with Server(echo, ssl_context=server_ctx) as server:
        pool = ClientPool(ssl_context=client_ctx)
        assert await fetch(pool, server.url, b"1") == (200, b'{"n":1,"got":1}')
        assert await fetch(pool, server.url, b"2") == (200, b'{"n":2,"got":2}')
        assert server.connections == 1
        await pool.aclose()
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await fetch(ClientPool(), server.url)  # the system's CAs don't know this certificate
