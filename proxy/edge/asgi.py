"""The HTTP edge: every dialect's routes are dispatched here, straight from ASGI (FastAPI's routing
and dependency machinery cost more per request than the whole relay); everything else (admin,
spend, health, models, /docs) goes on to FastAPI. One dispatch: a dialect route exists only here."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from ..core import Disconnected
from ..dialects.base import PARAM, Dialect, Endpoint, Incoming, Reply
from ..errors import MethodNotAllowed, WebSocketRefused, as_keystile, error_body
from . import docs
from .body import read_body
from .send import send_body, send_error, send_reply, watch


Route = tuple[Dialect, Endpoint]
NO_PARAMS: Mapping[str, str] = MappingProxyType({})


class Routes:
    """The dialects' routes: exact paths by method (one dict lookup on the hot path), then paths
    with parameters (`/v2/{endpoint_id}/status/{job_id}`), matched in order by pattern."""

    def __init__(self, dialects: Sequence[Dialect]):
        self.exact: dict[str, dict[str, Route]] = {}
        self.patterns: list[tuple[str, str, re.Pattern[str], Route]] = []  # (method, static prefix, ...)
        self.methods: dict[str, list[str]] = {}  # exact path -> the methods it is served with
        seen: dict[tuple[str, str], str] = {}
        for dialect in dialects:
            for prefix in dialect.prefixes:
                for endpoint in dialect.endpoints:
                    path = prefix + endpoint.path
                    if (endpoint.method, path) in seen:
                        raise ValueError(f"{endpoint.method} {path} is claimed by dialects "
                                         f"{seen[endpoint.method, path]} and {dialect.name}")
                    seen[endpoint.method, path] = dialect.name
                    if "{" not in path:
                        self.exact.setdefault(endpoint.method, {})[path] = (dialect, endpoint)
                        self.methods.setdefault(path, []).append(endpoint.method)
                    else:
                        pattern = re.compile("^" + PARAM.sub(r"(?P<\1>[^/]+)", path) + "$")
                        static = path[:path.index("{")]  # checked first: most paths fail it at once
                        self.patterns.append((endpoint.method, static, pattern, (dialect, endpoint)))

    def match(self, method: str, path: str) -> tuple[Route, Mapping[str, str]] | None:
        table = self.exact.get(method)
        route = table.get(path) if table is not None else None
        if route is not None:
            return route, NO_PARAMS
        for m, static, pattern, route in self.patterns:
            if m == method and path.startswith(static) and (found := pattern.match(path)) is not None:
                return route, found.groupdict()
        return None

    def wrong_method(self, method: str, path: str) -> tuple[Dialect, MethodNotAllowed] | None:
        """A dialect's path asked with a method it is not served with: the refusal, in its dialect."""
        allowed = self.methods.get(path)
        if not allowed:
            return None
        methods = ", ".join(allowed)
        return (self.exact[allowed[0]][path][0],
                MethodNotAllowed(f"{method} is not allowed here; use {methods}", headers={"Allow": methods}))


async def refuse_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    """A WebSocket handshake on a dialect's route (Codex tries one on /v1/responses before POSTing):
    426 at once where the server lets the app answer a handshake with a status (Codex then falls
    back to HTTP without retrying), else the handshake is closed (the server answers 403)."""
    await receive()  # websocket.connect
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = error_body(WebSocketRefused())
    await send({"type": "websocket.http.response.start", "status": 426,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "websocket.http.response.body", "body": body})


def request_id_for(headers: Mapping[str, str], own: str) -> str:
    """The request's id, the key of its usage record: the gateway's own `own` (unique), after a proxy's
    (nginx's) or the client's X-Request-ID when that is a short printable token, cut to 32 characters
    (nginx's ids are 32; with `-` and the gateway's 16 + counter digits it stays within the 64 of
    spend_logs.request_id), so the proxy's logs and the usage record find each other by that prefix.
    Never the given id alone: a client repeating one would make its later usage records duplicates,
    skipped, and unbilled."""
    value = headers.get("x-request-id")
    if value and len(value) <= 128 and value.isascii() and value.isprintable() and " " not in value:
        return f"{value[:32]}-{own}"
    return own


def with_request_id(send: Send, request_id: str) -> Send:
    """`send` that puts `x-request-id` on the answer (FastAPI's routes: admin, spend, health, models)."""
    header = (b"x-request-id", request_id.encode())

    async def tagged(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)
    return tagged


class Edge:
    """`app` serves everything but the dialects' routes; /openapi.json lists these too (docs.py)."""

    def __init__(self, app: FastAPI, dialects: Sequence[Dialect]):
        self.app = app
        self.routes = Routes(dialects)
        docs.install(app, dialects)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket" and self.routes.match("GET", scope["path"]) is not None:
                await refuse_websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)  # lifespan, other websockets
            return
        found = self.routes.match(scope["method"], scope["path"])
        if found is None:
            own = self.app.state.services.gateway.new_request_id()
            send = with_request_id(send, request_id_for(Request(scope).headers, own))
            refused = self.routes.wrong_method(scope["method"], scope["path"])
            if refused is not None:
                await send_error(send, *refused)
            else:
                await self.app(scope, receive, send)
            return
        (dialect, endpoint), params = found
        services = self.app.state.services
        request = Request(scope, receive)
        disconnected = watch(receive)
        limit = services.options.max_request_bytes
        gateway = services.gateway
        request_id = request_id_for(request.headers, gateway.new_request_id())
        tagged = [(b"x-request-id", request_id.encode())]
        incoming = Incoming(scope["path"], lambda: read_body(request, limit), disconnected, params,
                            scope.get("query_string", b""), request.headers, request_id,
                            lambda reply: asyncio.create_task(send_reply(send, dialect, tag(reply, tagged),
                                                                           disconnected, gateway.watches)))
        try:
            principal = await services.auth.authenticate(request)
            reply = await dialect.handle(gateway, principal, endpoint, incoming)
        except Disconnected:
            await send_body(send, 499, b"", tagged)  # nobody is listening; the call is settled and recorded
            return
        except Exception as exc:  # the one error mapping, rendered in the dialect's envelope
            await send_error(send, dialect, as_keystile(exc), tagged)
            return
        if not reply.sent:
            await send_reply(send, dialect, tag(reply, tagged), disconnected, gateway.watches)


def tag(reply: Reply, tagged: list[tuple[bytes, bytes]]) -> Reply:
    """`reply` with the edge's own headers (x-request-id) after its own."""
    reply.headers = [*reply.headers, *tagged]
    return reply
