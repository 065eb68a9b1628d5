"""The one helper bench/fast_upstream.py and bench/minimal_relay.py share (both run as scripts from
bench/, so this imports as a top-level module): reading a whole ASGI request body."""

from __future__ import annotations


async def read_body(receive) -> bytes:
    """The request body, all its http.request messages joined."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body
