"""Reading a request body within a size limit, each failure a typed error naming what is wrong;
a client that hangs up while sending it is core.Disconnected."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from ..core import Disconnected
from ..errors import BadRequest, PayloadTooLarge


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    try:
        if declared is not None:
            if not declared.isdigit():
                raise BadRequest("invalid Content-Length header")
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
            return await request.body()
        buf = bytearray()
        async for part in request.stream():
            buf += part
            if len(buf) > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        return bytes(buf)
    except ClientDisconnect:
        raise Disconnected() from None
