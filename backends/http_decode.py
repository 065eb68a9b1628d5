"""Content-Encoding of upstream answers, decoded as the body arrives.

The client asks for `Accept-Encoding: identity`; a server that compresses anyway is decoded here:
gzip and deflate with zlib (deflate zlib-wrapped or raw, as servers send both), br with brotli and
zstd with zstandard (both dependencies of Keystile). Any other coding is refused with a ValueError
naming it (the client turns it into BadResponse): relaying bytes nobody can read would only move
the failure to the caller. A br or zstd body that ends before its stream does is refused too.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli
import zstandard


class Decoder(Protocol):
    def decompress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Gzip:
    def __init__(self) -> None:
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def decompress(self, data: bytes) -> bytes:
        return self._z.decompress(data)

    def flush(self) -> bytes:
        return self._z.flush()


class _Deflate:
    """RFC 9110's deflate is zlib-wrapped; some servers send raw deflate: tried when the first
    bytes are not a zlib header (what httpx and browsers do)."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj()
        self._first = True

    def decompress(self, data: bytes) -> bytes:
        if self._first and data:
            self._first = False
            try:
                return self._z.decompress(data)
            except zlib.error:
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._z.decompress(data)

    def flush(self) -> bytes:
        return self._z.flush()


class _Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def decompress(self, data: bytes) -> bytes:
        return self._d.process(data)

    def flush(self) -> bytes:
        if not self._d.is_finished():
            raise ValueError("the brotli stream is truncated")
        return b""


class _Zstd:
    """One or more zstd frames back to back (as a server that compresses each write sends them)."""

    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor().decompressobj()

    def decompress(self, data: bytes) -> bytes:
        out = self._d.decompress(data)
        while self._d.eof and self._d.unused_data:
            rest = self._d.unused_data
            self._d = zstandard.ZstdDecompressor().decompressobj()
            out += self._d.decompress(rest)
        return out

    def flush(self) -> bytes:
        if not self._d.eof:
            raise ValueError("the zstd frame is truncated")
        return b""


class _Chain:
    """`Content-Encoding: gzip, br` was applied left to right: undone right to left."""

    def __init__(self, decoders: list[Decoder]) -> None:
        self._decoders = decoders

    def decompress(self, data: bytes) -> bytes:
        for d in self._decoders:
            data = d.decompress(data)
        return data

    def flush(self) -> bytes:
        data = b""
        for d in self._decoders:  # what one leaves at the end still passes through the next
            data = (d.decompress(data) if data else b"") + d.flush()
        return data


def _one(coding: str) -> Decoder:
    if coding in ("gzip", "x-gzip"):
        return _Gzip()
    if coding == "deflate":
        return _Deflate()
    if coding == "br":
        return _Brotli()
    if coding == "zstd":
        return _Zstd()
    raise ValueError(f"upstream sent a body with Content-Encoding {coding!r}, which Keystile cannot decode "
                     "(it asks for identity, and decodes gzip, deflate, br and zstd)")


def decoder(content_encoding: bytes) -> Decoder | None:
    """The decoder for a Content-Encoding header value; None for identity."""
    codings = [c for c in content_encoding.decode("latin-1").lower().replace(" ", "").split(",")
               if c and c != "identity"]
    if not codings:
        return None
    decoders = [_one(c) for c in reversed(codings)]
    return decoders[0] if len(decoders) == 1 else _Chain(decoders)
