"""Content-Encoding of upstream answers, decoded as the body arrives.

The client asks for `Accept-Encoding: identity`; a server that compresses anyway is decoded here:
gzip and deflate with zlib (deflate zlib-wrapped or raw, as servers send both), br and zstd when
a library for them is already installed (brotli or brotlicffi; zstandard). Any other coding,
or br/zstd without their library, is refused with a ValueError naming it (the client turns it
into BadResponse): relaying bytes nobody can read would only move the failure to the caller.
"""

from __future__ import annotations

import importlib
import zlib
from typing import Protocol


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
    def __init__(self, module) -> None:
        self._d = module.Decompressor()
        self._process = getattr(self._d, "process", None) or self._d.decompress

    def decompress(self, data: bytes) -> bytes:
        return self._process(data)

    def flush(self) -> bytes:
        return b""


class _Zstd:
    def __init__(self, module) -> None:
        self._d = module.ZstdDecompressor().decompressobj()

    def decompress(self, data: bytes) -> bytes:
        return self._d.decompress(data)

    def flush(self) -> bytes:
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


def _optional(*modules: str):
    for name in modules:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _one(coding: str) -> Decoder:
    if coding in ("gzip", "x-gzip"):
        return _Gzip()
    if coding == "deflate":
        return _Deflate()
    if coding == "br" and (brotli := _optional("brotli", "brotlicffi")) is not None:
        return _Brotli(brotli)
    if coding == "zstd" and (zstd := _optional("zstandard")) is not None:
        return _Zstd(zstd)
    raise ValueError(f"upstream sent a body with Content-Encoding {coding!r}, which Keystile cannot decode "
                     "(it asks for identity; gzip and deflate are decoded, br and zstd when brotli/zstandard "
                     "is installed)")


def decoder(content_encoding: bytes) -> Decoder | None:
    """The decoder for a Content-Encoding header value; None for identity."""
    codings = [c for c in content_encoding.decode("latin-1").lower().replace(" ", "").split(",")
               if c and c != "identity"]
    if not codings:
        return None
    decoders = [_one(c) for c in reversed(codings)]
    return decoders[0] if len(decoders) == 1 else _Chain(decoders)
