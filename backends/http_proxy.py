"""Outbound proxies from the environment, as httpx and aiohttp (trust_env) and curl read them.

`HTTPS_PROXY` / `HTTP_PROXY` (or `ALL_PROXY`; lower-case names win, as in the standard library),
and `NO_PROXY` naming hosts, domain suffixes, host:port or `*` to go direct. The standard
library's urllib.request reads them (and ignores HTTP_PROXY under CGI, where it is a request
header). Only http:// proxies: an https:// upstream goes through a CONNECT tunnel with TLS to the
upstream inside it; an http:// upstream is sent to the proxy with the absolute URL. User and
password in the proxy URL become a Basic Proxy-Authorization header.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

MAX_REPLY = 16 * 1024  # a proxy's answer to CONNECT is a status line and a few headers


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None  # the Proxy-Authorization value

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def _parse(variable: str, raw: str) -> Proxy:
    url = urlsplit(raw if "://" in raw else f"http://{raw}")
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"proxy for {variable} is {raw!r}: only http:// proxies are supported")
    auth = None
    if url.username is not None:
        pair = f"{unquote(url.username)}:{unquote(url.password or '')}".encode()
        auth = "Basic " + base64.b64encode(pair).decode()
    return Proxy(url.hostname, url.port or 80, auth)


class Proxies:
    """The environment's proxy settings, read once (when the client pool is built)."""

    def __init__(self, environ: dict[str, str] | None = None):
        self._env = urllib.request.getproxies_environment() if environ is None else environ
        self._by_scheme = {scheme: _parse(f"{scheme}_proxy", raw) for scheme, raw in self._env.items()
                           if scheme in ("http", "https", "all") and raw}

    def for_origin(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy to reach scheme://host:port through, or None to connect directly."""
        proxy = self._by_scheme.get(scheme) or self._by_scheme.get("all")
        if proxy is None or urllib.request.proxy_bypass_environment(f"{host}:{port}", self._env):
            return None
        return proxy


class _ConnectReply(asyncio.Protocol):
    """Collects the proxy's answer to CONNECT: its head, up to the blank line."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.head: asyncio.Future[bytes] = loop.create_future()
        self._data = b""

    def data_received(self, data: bytes) -> None:
        self._data += data
        end = self._data.find(b"\r\n\r\n")
        if self.head.done():
            return
        if end >= 0:
            if end + 4 < len(self._data):  # the upstream speaks after our TLS hello, never first
                self.head.set_exception(ConnectionError("proxy sent data after its CONNECT answer"))
            else:
                self.head.set_result(self._data[:end])
        elif len(self._data) > MAX_REPLY:
            self.head.set_exception(ConnectionError(f"proxy's answer to CONNECT exceeds {MAX_REPLY} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(ConnectionError(f"proxy closed the connection during CONNECT ({exc or 'EOF'})"))


async def tunnel(loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol], proxy: Proxy,
                 host: str, port: int, ssl_context: ssl.SSLContext) -> asyncio.Protocol:
    """A TLS connection to host:port through a CONNECT tunnel; returns `factory()`'s protocol,
    connected. Failures are OSErrors (ConnectionError) naming the proxy."""
    transport, reply = await loop.create_connection(lambda: _ConnectReply(loop), proxy.host, proxy.port)
    try:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if proxy.authorization:
            lines.append(f"Proxy-Authorization: {proxy.authorization}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = await reply.head
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or parts[1] != "200":
            raise ConnectionError(f"proxy {proxy.where} refused CONNECT {target}: {status_line[:200]!r}")
        protocol = factory()
        tls = await loop.start_tls(transport, protocol, ssl_context, server_hostname=host)
    except BaseException:
        transport.abort()
        raise
    if tls is None:  # the transport closed during the handshake
        raise ConnectionError(f"proxy {proxy.where} closed the tunnel to {target} during the TLS handshake")
    protocol.connection_made(tls)
    return protocol
