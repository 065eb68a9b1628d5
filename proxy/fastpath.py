"""The inference routes served straight from ASGI, ahead of FastAPI's routing and dependency
machinery (which costs more per request than the whole relay). Same handlers, same auth, same
errors: only the dispatch is shorter. Everything else goes on to FastAPI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .errors import as_keystile, to_response
from .routes import openai

Handler = Callable[..., Awaitable[Response]]
HOT: dict[str, Handler] = {prefix + path: handler for prefix in ("/v1", "/openai/v1")
                           for path, handler in openai.INFERENCE.items()}


class FastPath:
    def __init__(self, app: FastAPI):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = HOT.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        services = self.app.state.services
        try:
            response = await handler(request, services, await openai.caller(request, services))
        except Exception as exc:  # the one error mapping, as FastAPI's handlers would apply it
            response = to_response(as_keystile(exc))
        await response(scope, receive, send)
