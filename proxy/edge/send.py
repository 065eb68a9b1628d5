"""Sending a dialect's Reply over ASGI: a whole body, or SSE framed here event by event as the
dialect yields them, while watching the client (a hang-up cancels the relay at once; the core's
stream settles in its own `finally`). A failure after the stream started ends it with the
dialect's error event."""

from __future__ import annotations

from starlette.types import Receive, Send

from ..core import Deadlines, Disconnected, Watch, unless_disconnected
from ..dialects.base import COMMENT, Dialect, Reply
from ..errors import KeystileError, as_keystile

SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


def watch(receive: Receive) -> Watch:
    """`disconnected()` for the core: returns when ASGI says the client is gone (to be awaited only
    once the body has been read)."""
    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
    return disconnected


async def send_body(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                    media_type: bytes = b"application/json") -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", media_type), (b"content-length", b"%d" % len(body)), *headers]})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, dialect: Dialect, err: KeystileError,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()]
    await send_body(send, err.status, dialect.error(err), [*headers, *(extra or ())])


async def send_reply(send: Send, dialect: Dialect, reply: Reply, disconnected: Watch, watches: Deadlines) -> None:
    if reply.events is None:
        await send_body(send, reply.status, reply.body, reply.headers, reply.media_type)
        return
    try:
        await unless_disconnected(disconnected, _send_events(send, dialect, reply), watches)
    except (Disconnected, OSError):
        pass  # the client is gone; the core's stream accounts for it when closed below
    finally:
        await reply.events.aclose()
        if reply.close is not None:
            await reply.close()


async def _send_events(send: Send, dialect: Dialect, reply: Reply) -> None:
    await send({"type": "http.response.start", "status": reply.status,
                "headers": [(b"content-type", reply.media_type), *SSE_HEADERS, *reply.headers]})
    events = reply.events
    assert events is not None
    frame = dialect.frame
    sending = False
    try:
        async for event in events:
            sending = True
            body = frame(event) if event[0] is not COMMENT else b": " + event[1] + b"\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": True})
            sending = False
    except Exception as exc:
        if sending:
            raise  # the client is gone
        # Bytes have gone out already: the failure travels as the dialect's error event.
        await send({"type": "http.response.body", "body": frame(dialect.stream_error(as_keystile(exc))),
                    "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
