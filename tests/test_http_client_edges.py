"""The upstream client's edges (issue 11): interim answers, compression, the pool wait inside the
deadline, oversized headers, redirects, and proxies from the environment, each against small real
socket servers (and a small real proxy)."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import zlib
from urllib.parse import urlsplit

import brotli
import pytest
import uvloop
import zstandard

from backends import errors
from backends.anthropic import AnthropicBackend
from backends.http import BadResponse, ClientPool, ConnectFailed, Redirected, Timeout
from backends.openai_compat import OpenAICompatBackend

from .test_http_client import Server, _self_signed, echo, fetch, reply


async def test_interim_1xx_answers_are_skipped():
    async def early_hints(n, body, writer):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n"
                     b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(reply(b'{"n":%d}' % n))

    async with Server(early_hints) as server:
        pool = ClientPool()
        assert await fetch(pool, server.url) == (200, b'{"n":1}')
        origin = pool.get(server.url)
        async with await origin.open(origin.request_head("POST", "/v1/x", {}), b"{}", idle_timeout=5) as resp:
            assert resp.status == 200 and await resp.read() == b'{"n":2}'
        assert server.connections == 1  # the connection stays usable after both
        await pool.aclose()


def _encoded(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.compress(data)
    if coding == "deflate":
        return zlib.compress(data)
    if coding == "raw-deflate":
        z = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return z.compress(data) + z.flush()
    if coding == "br":
        return brotli.compress(data)
    if coding == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if coding == "zstd-frames":  # a frame per write, as a server compressing as it goes sends them
        third = len(data) // 3
        return b"".join(zstandard.ZstdCompressor().compress(data[i:i + third]) for i in range(0, len(data), third))
    raise AssertionError(coding)


CODINGS = ("gzip", "deflate", "raw-deflate", "br", "zstd", "zstd-frames")


async def test_identity_is_asked_for_and_a_compressed_answer_is_decoded():
    data = b'{"text":"' + b"compressible " * 2000 + b'"}'

    async def compressing(n, body, writer):
        coding = body.decode().strip('"')
        encoded = _encoded(coding, data)
        name = {"raw-deflate": "deflate", "zstd-frames": "zstd"}.get(coding, coding)
        if n % 2:  # whole, then chunked in small pieces
            writer.write(reply(encoded, f"Content-Encoding: {name}"))
        else:
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Encoding: {name}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            for i in range(0, len(encoded), 100):
                piece = encoded[i:i + 100]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")

    async with Server(compressing) as server:
        pool = ClientPool()
        for coding in CODINGS:
            for _ in range(2):
                assert await fetch(pool, server.url, b'"%s"' % coding.encode()) == (200, data), coding
        assert all(b"\r\nAccept-Encoding: identity\r\n" in head for head in server.heads)
        origin = pool.get(server.url)  # a stream is decoded as it comes, whole or in 100-byte chunks
        for coding in CODINGS:
            for _ in range(2):
                head = origin.request_head("POST", "/v1/x", {})
                async with await origin.open(head, b'"%s"' % coding.encode(), idle_timeout=5) as resp:
                    assert b"".join([c async for c in resp.chunks()]) == data, coding
        assert server.connections == 1  # each decoded answer left its connection reusable
        await pool.aclose()


async def test_br_and_zstd_event_streams_are_decoded_event_by_event():
    """An SSE answer compressed as it is written (a flush per event) reaches the caller event by
    event, not at the end."""
    events = [b'data: {"n":%d}\n\n' % i for i in range(3)] + [b"data: [DONE]\n\n"]
    sent: dict[str, asyncio.Event] = {}

    async def sse(n, body, writer):
        coding = body.decode().strip('"')
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: {coding}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        if coding == "br":
            c = brotli.Compressor()
            pieces = [c.process(e) + c.flush() for e in events] + [c.finish()]
        else:
            c = zstandard.ZstdCompressor().compressobj()
            pieces = [c.compress(e) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) for e in events] + [c.flush()]
        for i, piece in enumerate(pieces):
            if piece:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            if i < len(events):  # the next event once the client has read this one
                await sent[coding].wait()
                sent[coding].clear()
        writer.write(b"0\r\n\r\n")

    async with Server(sse) as server:
        pool = ClientPool()
        origin = pool.get(server.url)
        for coding in ("br", "zstd"):
            sent[coding] = asyncio.Event()
            got = []
            async with await origin.open(origin.request_head("POST", "/v1/x", {}), b'"%s"' % coding.encode(),
                                         idle_timeout=5) as resp:
                async for chunk in resp.chunks():
                    got.append(chunk)
                    sent[coding].set()
            assert got == events, coding  # one decoded event per chunk, as sent
        await pool.aclose()


async def test_an_encoding_nobody_can_decode_is_refused_clearly(tmp_path):
    whole = b'{"text":"' + b"x" * 5000 + b'"}'
    answers = {1: ("compress", b"this is not gzip at all"), 2: ("gzip", b"this is not gzip at all"),
               3: ("br", b"this is not brotli"), 4: ("zstd", b"this is not zstd"),
               5: ("br", brotli.compress(whole)[:-4]), 6: ("zstd", zstandard.ZstdCompressor().compress(whole)[:-4]),
               7: ("gzip, snappy", b"{}")}

    async def odd(n, body, writer):
        coding, payload = answers[(n - 1) % len(answers) + 1]
        writer.write(reply(payload, f"Content-Encoding: {coding}"))

    async with Server(odd) as server:
        pool = ClientPool()
        with pytest.raises(BadResponse, match="Content-Encoding 'compress', which Keystile cannot decode"):
            await fetch(pool, server.url)
        for coding in ("gzip", "br", "zstd"):
            with pytest.raises(BadResponse, match=f"could not be decoded \\('{coding}'"):
                await fetch(pool, server.url)
        with pytest.raises(BadResponse, match="could not be decoded.*brotli stream is truncated"):
            await fetch(pool, server.url)
        with pytest.raises(BadResponse, match="could not be decoded.*zstd frame is truncated"):
            await fetch(pool, server.url)
        with pytest.raises(BadResponse, match="Content-Encoding 'snappy'"):
            await fetch(pool, server.url)

        # Through a backend the caller gets a 502 that names the coding.
        backend = OpenAICompatBackend("m", "m", api_base=server.url, api_key=None, pool=pool, timeout=5)
        with pytest.raises(errors.UpstreamHTTPError) as info:
            await backend.chat({"messages": []})
        assert info.value.status == 502 and "Content-Encoding 'compress'" in info.value.message
        await pool.aclose()


async def test_waiting_for_a_free_connection_counts_in_the_deadline():
    async def slow_first(n, body, writer):
        await asyncio.sleep(2.0 if n == 1 else 0)
        writer.write(reply(b'{"n":%d}' % n))

    async with Server(slow_first) as server:
        pool = ClientPool(max_connections=1)
        busy = asyncio.create_task(fetch(pool, server.url, timeout=5))
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Timeout, match="stayed busy"):
            await fetch(pool, server.url, timeout=0.3)
        assert 0.3 <= loop.time() - started < 0.6
        origin = pool.get(server.url)
        started = loop.time()
        with pytest.raises(Timeout):  # a stream's first byte too: waiting is silence
            await origin.open(origin.request_head("POST", "/v1/x", {}), b"{}", idle_timeout=0.3)
        assert loop.time() - started < 0.6
        assert (await busy)[0] == 200
        assert await fetch(pool, server.url) == (200, b'{"n":2}')  # the pool is whole afterwards
        await pool.aclose()


async def test_oversized_answer_headers_are_refused():
    cut = asyncio.Event()

    async def endless_headers(n, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\n")
        try:
            for i in range(20_000):  # 1 KiB a header, 20 MiB in all unless the client hangs up
                writer.write(b"X-Filler-%d: %s\r\n" % (i, b"y" * 1000))
                await writer.drain()
        except ConnectionError:
            cut.set()
            return False
        writer.write(b"Content-Length: 2\r\n\r\n{}")

    async with Server(endless_headers) as server:
        pool = ClientPool()
        with pytest.raises(BadResponse, match="headers exceed 64 KiB"):
            await fetch(pool, server.url)
        await asyncio.wait_for(cut.wait(), 2.0)  # the client hung up instead of reading on
        await pool.aclose()


async def test_an_oversized_head_in_one_write_is_refused_too():
    async def one_write(n, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: 2\r\n\r\n{}" % (b"z" * 100_000))

    async with Server(one_write) as server:
        pool = ClientPool()
        with pytest.raises(BadResponse, match="headers exceed 64 KiB"):
            await fetch(pool, server.url)
        await pool.aclose()


async def test_a_redirect_is_a_502_naming_where_to(tmp_path):
    async def moved(n, body, writer):
        writer.write(b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://api.example.com/v1/chat/completions\r\n"
                     b"Content-Type: text/html\r\nContent-Length: 12\r\n\r\n<h1>301</h1>")

    async with Server(moved) as server:
        pool = ClientPool()
        with pytest.raises(Redirected, match="redirect to https://api.example.com/v1/chat/completions"):
            await fetch(pool, server.url)
        backend = OpenAICompatBackend("m", "m", api_base=server.url, api_key=None, pool=pool, timeout=5)
        claude = AnthropicBackend("c", "c", api_base=server.url, api_key=None, pool=pool, timeout=5,
                                  stream_timeout=None, params={})
        for call in (backend.chat({"messages": []}), _drain(backend.chat_stream({"messages": []})),
                     claude.messages({"messages": []}), _drain(claude.messages_stream({"messages": []}))):
            with pytest.raises(errors.UpstreamHTTPError) as info:
                await call
            assert info.value.status == 502
            assert "HTTP 301 with a redirect to https://api.example.com/v1/chat/completions" in info.value.message
            assert "JSON" not in info.value.message
        await pool.aclose()


async def _drain(stream) -> None:
    async for _ in stream:
        pass


class Proxy:
    """A small HTTP proxy on 127.0.0.1: CONNECT tunnels and absolute-URL forwarding, one upstream
    connection per client connection. Records each request line; with `auth`, wants that
    Proxy-Authorization and answers 407 otherwise. With `ssl`, an https:// proxy (TLS to it)."""

    def __init__(self, auth: str | None = None, ssl=None):
        self.auth = auth
        self.ssl = ssl
        self.lines: list[str] = []
        self.heads: list[bytes] = []

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://localhost:{port}" if self.ssl else f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode()
            self.lines.append(line)
            self.heads.append(head)
            method, target, _ = line.split(" ")
            if self.auth and f"\r\nProxy-Authorization: {self.auth}\r\n".encode() not in head:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                url = urlsplit(target)
                up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
                up_writer.write(head.replace(target.encode(), url.path.encode(), 1))
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class Socks5:
    """A small SOCKS5 server on 127.0.0.1 (RFC 1928, CONNECT only; with `user`, RFC 1929
    username/password authentication required). Records each destination as the client named it:
    (address type, host, port), the type 1 for IPv4, 3 for a name, 4 for IPv6."""

    def __init__(self, user: tuple[str, str] | None = None):
        self.user = user
        self.targets: list[tuple[int, str, int]] = []

    async def __aenter__(self) -> Socks5:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            version, n = await reader.readexactly(2)
            methods = await reader.readexactly(n)
            wanted = 2 if self.user else 0
            if version != 5 or wanted not in methods:
                writer.write(b"\x05\xff")
                return
            writer.write(bytes([5, wanted]))
            if self.user:
                _, ulen = await reader.readexactly(2)
                name = (await reader.readexactly(ulen)).decode()
                plen = (await reader.readexactly(1))[0]
                password = (await reader.readexactly(plen)).decode()
                ok = (name, password) == self.user
                writer.write(b"\x01\x00" if ok else b"\x01\x01")
                if not ok:
                    return
            _, command, _, atyp = await reader.readexactly(4)
            if atyp == 1:
                host = ipaddress.IPv4Address(await reader.readexactly(4)).compressed
            elif atyp == 4:
                host = ipaddress.IPv6Address(await reader.readexactly(16)).compressed
            else:
                host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            port = int.from_bytes(await reader.readexactly(2), "big")
            self.targets.append((atyp, host, port))
            if command != 1:
                writer.write(b"\x05\x07\x00\x01" + bytes(6))  # command not supported
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                writer.write(b"\x05\x05\x00\x01" + bytes(6))  # connection refused
                return
            writer.write(b"\x05\x00\x00\x01" + bytes(6))
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture
def proxy_env(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


async def test_http_upstream_through_http_proxy_and_no_proxy(proxy_env):
    async with Server(echo) as server, Proxy(auth="Basic dXNlcjpwIHc=") as proxy:
        proxy_env.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://user:p%20w@"))
        pool = ClientPool()
        assert await fetch(pool, server.url, b"1") == (200, b'{"n":1,"got":1}')
        assert await fetch(pool, server.url, b"2") == (200, b'{"n":2,"got":2}')
        port = urlsplit(server.url).port
        assert proxy.lines == [f"POST http://localhost:{port}/v1/x HTTP/1.1"]  # one kept-alive connection
        assert server.heads[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
        await pool.aclose()

        proxy_env.setenv("NO_PROXY", "example.com,localhost")
        pool = ClientPool()
        assert (await fetch(pool, server.url, b"3"))[0] == 200
        assert len(proxy.lines) == 1  # went direct
        await pool.aclose()


async def test_https_upstream_through_a_connect_tunnel(proxy_env, tmp_path):
    server_ctx, client_ctx = _self_signed(tmp_path)
    async with Server(echo, ssl_context=server_ctx) as server, Proxy() as proxy:
        proxy_env.setenv("HTTPS_PROXY", proxy.url)
        proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # not used for https://
        pool = ClientPool(ssl_context=client_ctx)
        assert await fetch(pool, server.url, b"1") == (200, b'{"n":1,"got":1}')
        assert await fetch(pool, server.url, b"2") == (200, b'{"n":2,"got":2}')
        port = urlsplit(server.url).port
        assert proxy.lines == [f"CONNECT localhost:{port} HTTP/1.1"]
        assert server.connections == 1
        await pool.aclose()


async def test_a_proxy_that_refuses_is_connect_failed_naming_it(proxy_env, tmp_path):
    _, client_ctx = _self_signed(tmp_path)
    async with Proxy(auth="Basic c2VjcmV0") as proxy, Socks5(user=("u", "right")) as socks:
        proxy_env.setenv("HTTPS_PROXY", proxy.url)
        with pytest.raises(ConnectFailed, match=r"via proxy http://127\.0\.0\.1:\d+ .*refused CONNECT.*407"):
            await fetch(ClientPool(ssl_context=client_ctx), "https://localhost:1/v1")
        proxy_env.setenv("HTTPS_PROXY", f"socks5://u:wrong@127.0.0.1:{socks.port}")
        with pytest.raises(ConnectFailed, match=r"via proxy socks5://127\.0\.0\.1:\d+ .*refused"):
            await fetch(ClientPool(ssl_context=client_ctx), "https://localhost:1/v1")
        proxy_env.setenv("HTTPS_PROXY", f"socks5://u:right@127.0.0.1:{socks.port}")
        with pytest.raises(ConnectFailed, match=r"via proxy socks5://.*refused to connect to localhost:1"):
            await fetch(ClientPool(ssl_context=client_ctx), "https://localhost:1/v1")  # nothing listens there
        proxy_env.setenv("HTTPS_PROXY", "socks4://127.0.0.1:1080")
        with pytest.raises(ValueError, match="only http://, https://, socks5:// and socks5h:// proxies"):
            ClientPool()


async def test_https_proxy_forwarding_and_tunnelling_tls_in_tls(proxy_env, tmp_path):
    """TLS to the proxy itself (verified with the test's CA); an http:// upstream is forwarded over
    it, an https:// one tunnelled with CONNECT and its own TLS inside the proxy's."""
    server_ctx, client_ctx = _self_signed(tmp_path)
    async with Server(echo) as plain, Server(echo, ssl_context=server_ctx) as secure, \
            Proxy(auth="Basic dTpw", ssl=server_ctx) as proxy:
        proxy_env.setenv("HTTP_PROXY", proxy.url.replace("https://", "https://u:p@"))
        proxy_env.setenv("HTTPS_PROXY", proxy.url.replace("https://", "https://u:p@"))
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):  # the proxy is verified
            await fetch(ClientPool(ssl_context=client_ctx), secure.url)
        pool = ClientPool(ssl_context=client_ctx, proxy_ssl_context=client_ctx)
        for i in (1, 2):
            assert await fetch(pool, plain.url, b"%d" % i) == (200, b'{"n":%d,"got":%d}' % (i, i))
            assert await fetch(pool, secure.url, b"%d" % i) == (200, b'{"n":%d,"got":%d}' % (i, i))
        plain_port, secure_port = urlsplit(plain.url).port, urlsplit(secure.url).port
        assert sorted(proxy.lines) == sorted([f"POST http://localhost:{plain_port}/v1/x HTTP/1.1",
                                              f"CONNECT localhost:{secure_port} HTTP/1.1"])  # kept alive
        assert plain.connections == secure.connections == 1
        await pool.aclose()


def test_tls_in_tls_on_uvloop(proxy_env, tmp_path):
    """The same tunnel on the event loop `keystile serve` runs (uvloop), whose start_tls over a TLS
    transport differs from asyncio's."""
    server_ctx, client_ctx = _self_signed(tmp_path)

    async def main() -> tuple[int, bytes]:
        async with Server(echo, ssl_context=server_ctx) as secure, Proxy(ssl=server_ctx) as proxy:
            proxy_env.setenv("HTTPS_PROXY", proxy.url)
            pool = ClientPool(ssl_context=client_ctx, proxy_ssl_context=client_ctx)
            try:
                return await fetch(pool, secure.url, b"1")
            finally:
                await pool.aclose()

    assert uvloop.run(main()) == (200, b'{"n":1,"got":1}')


@pytest.mark.parametrize("scheme, named_as", [("socks5", (1, "127.0.0.1")), ("socks5h", (3, "localhost"))])
async def test_upstreams_through_a_socks5_proxy(proxy_env, tmp_path, scheme, named_as):
    """socks5:// resolves the upstream's name here and sends the address; socks5h:// sends the name
    for the proxy to resolve. Username and password as SOCKS5 wants them; TLS to an https://
    upstream end to end through the proxy."""
    server_ctx, client_ctx = _self_signed(tmp_path)
    async with Server(echo) as plain, Server(echo, ssl_context=server_ctx) as secure, \
            Socks5(user=("us er", "p@ss")) as socks:
        url = f"{scheme}://us%20er:p%40ss@127.0.0.1:{socks.port}"
        proxy_env.setenv("HTTP_PROXY", url)
        proxy_env.setenv("HTTPS_PROXY", url)
        pool = ClientPool(ssl_context=client_ctx)
        for i in (1, 2):
            assert await fetch(pool, plain.url, b"%d" % i) == (200, b'{"n":%d,"got":%d}' % (i, i))
            assert await fetch(pool, secure.url, b"%d" % i) == (200, b'{"n":%d,"got":%d}' % (i, i))
        assert plain.heads[0].startswith(b"POST /v1/x HTTP/1.1\r\n")  # not the absolute URL: SOCKS is a tunnel
        ports = sorted(urlsplit(u).port for u in (plain.url, secure.url))
        assert sorted(socks.targets) == [(*named_as, port) for port in ports]  # one kept-alive connection each
        origin = pool.get(secure.url)  # a stream through it too
        async with await origin.open(origin.request_head("POST", "/v1/x", {}), b"3", idle_timeout=5) as resp:
            assert resp.status == 200 and await resp.read() == b'{"n":3,"got":3}'
        await pool.aclose()
