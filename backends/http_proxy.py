"""Outbound proxies from the environment, as httpx and aiohttp (trust_env) and curl read them.

`HTTPS_PROXY` / `HTTP_PROXY` (or `ALL_PROXY`; lower-case names win, as in the standard library),
and `NO_PROXY` naming hosts, domain suffixes, host:port or `*` to go direct. The standard
library's urllib.request reads them (and ignores HTTP_PROXY under CGI, where it is a request
header). Proxy URLs:

- `http://` and `https://` (TLS to the proxy itself, verified like an upstream: the system's CAs
  or SSL_CERT_FILE): an https:// upstream goes through a CONNECT tunnel with TLS to the upstream
  inside it (TLS in TLS through an https:// proxy); an http:// upstream is sent to the proxy with
  the absolute URL. User and password become a Basic Proxy-Authorization header.
- `socks5://` (the upstream's name resolved here, as curl does) and `socks5h://` (resolved by the
  proxy), with user and password as SOCKS5's username/password authentication; the upstream
  connection, TLS or not, goes through the proxy as it is. The SOCKS handshake is python-socks'.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from python_socks import ProxyError, ProxyType
from python_socks.async_.asyncio import Proxy as SocksProxy

MAX_REPLY = 16 * 1024  # a proxy's answer to CONNECT is a status line and a few headers
SCHEMES = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}  # with their default ports


@dataclass(frozen=True)
class Proxy:
    scheme: str  # one of SCHEMES
    host: str
    port: int
    authorization: str | None  # http(s): the Proxy-Authorization value
    username: str | None = None  # socks5: its username/password authentication
    password: str | None = None
    tls: ssl.SSLContext | None = None  # https: to verify the proxy with

    @property
    def where(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def socks(self) -> bool:
        return self.scheme.startswith("socks")

    def forwards(self, https: bool) -> bool:
        """Whether requests to an upstream of this kind are sent to the proxy itself, with the
        absolute URL (a plain-HTTP upstream through an HTTP proxy), rather than through a tunnel."""
        return not https and not self.socks


def _parse(variable: str, raw: str, tls: ssl.SSLContext) -> Proxy:
    url = urlsplit(raw if "://" in raw else f"http://{raw}")
    scheme = url.scheme.lower()
    if scheme not in SCHEMES or not url.hostname:
        raise ValueError(f"proxy for {variable} is {raw!r}: only http://, https://, socks5:// and socks5h:// "
                         "proxies are supported")
    user = None if url.username is None else unquote(url.username)
    password = None if url.username is None else unquote(url.password or "")
    auth = None
    if user is not None and not scheme.startswith("socks"):
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return Proxy(scheme, url.hostname, url.port or SCHEMES[scheme], auth, user, password,
                 tls if scheme == "https" else None)


class Proxies:
    """The environment's proxy settings, read once (when the client pool is built)."""

    def __init__(self, environ: dict[str, str] | None = None, *, tls: ssl.SSLContext | None = None):
        """`tls`: how https:// proxies are verified (default: the system's CAs, or SSL_CERT_FILE)."""
        self._env = urllib.request.getproxies_environment() if environ is None else environ
        tls = tls or ssl.create_default_context()
        self._by_scheme = {scheme: _parse(f"{scheme}_proxy", raw, tls) for scheme, raw in self._env.items()
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


async def connect(loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol], proxy: Proxy,
                  host: str, port: int, ssl_context: ssl.SSLContext | None) -> asyncio.Protocol:
    """A connection to host:port (TLS with `ssl_context`, else plain) through `proxy`; returns
    `factory()`'s protocol, connected. Failures are OSErrors (ConnectionError) naming the proxy."""
    if proxy.socks:
        return await _socks(loop, factory, proxy, host, port, ssl_context)
    if ssl_context is not None:
        return await _tunnel(loop, factory, proxy, host, port, ssl_context)
    _, protocol = await loop.create_connection(factory, proxy.host, proxy.port, ssl=proxy.tls,
                                               server_hostname=proxy.host if proxy.tls else None)
    return protocol  # plain HTTP through a forward proxy: the proxy is the peer


async def _socks(loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol], proxy: Proxy,
                 host: str, port: int, ssl_context: ssl.SSLContext | None) -> asyncio.Protocol:
    socks = SocksProxy(ProxyType.SOCKS5, proxy.host, proxy.port, proxy.username, proxy.password,
                       rdns=proxy.scheme == "socks5h", loop=loop)
    try:
        sock = await socks.connect(host, port, timeout=None)  # the caller's time limit bounds it
    except ProxyError as exc:  # the proxy answered, and said no
        raise ConnectionError(f"proxy {proxy.where} refused to connect to {host}:{port}: {exc}") from exc
    try:
        _, protocol = await loop.create_connection(factory, sock=sock, ssl=ssl_context,
                                                   server_hostname=host if ssl_context else None)
    except BaseException:
        sock.close()
        raise
    return protocol


async def _tunnel(loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol], proxy: Proxy,
                  host: str, port: int, ssl_context: ssl.SSLContext) -> asyncio.Protocol:
    """A TLS connection to host:port through a CONNECT tunnel (itself in TLS to an https:// proxy)."""
    transport, reply = await loop.create_connection(lambda: _ConnectReply(loop), proxy.host, proxy.port,
                                                    ssl=proxy.tls, server_hostname=proxy.host if proxy.tls else None)
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
