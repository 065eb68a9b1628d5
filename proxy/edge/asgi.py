"""The HTTP edge: every dialect's routes are dispatched here, straight from ASGI (FastAPI's routing
and dependency machinery cost more per request than the whole relay); everything else (admin,
spend, health, models, /docs) goes on to FastAPI. One dispatch: a dialect route exists only here."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from ..core import Disconnected
from ..dialects.base import Dialect, Endpoint, Incoming
from ..errors import as_keystile
from .body import read_body
from .send import send_body, send_error, send_reply, watch


def routes(dialects: Sequence[Dialect]) -> dict[str, tuple[Dialect, Endpoint]]:
    """Full path -> (dialect, endpoint), for every prefix of every dialect."""
    table: dict[str, tuple[Dialect, Endpoint]] = {}
    for dialect in dialects:
        for prefix in dialect.prefixes:
            for endpoint in dialect.endpoints:
                path = prefix + endpoint.path
                if path in table:
                    raise ValueError(f"{path} is claimed by dialects {table[path][0].name} and {dialect.name}")
                table[path] = (dialect, endpoint)
    return table


class Edge:
    def __init__(self, app: FastAPI, dialects: Sequence[Dialect]):
        self.app = app
        self.routes = routes(dialects)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        dialect, endpoint = route
        services = self.app.state.services
        request = Request(scope, receive)
        disconnected = watch(receive)
        limit = services.options.max_request_bytes
        try:
            principal = await services.auth.authenticate(request)
            reply = await dialect.handle(services.gateway, principal, endpoint,
                                         Incoming(scope["path"], lambda: read_body(request, limit), disconnected))
        except Disconnected:
            await send_body(send, 499, b"", [])  # nobody is listening; the call is settled and recorded
            return
        except Exception as exc:  # the one error mapping, rendered in the dialect's envelope
            await send_error(send, dialect, as_keystile(exc))
            return
        await send_reply(send, dialect, reply, disconnected)
