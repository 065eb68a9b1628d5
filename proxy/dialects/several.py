"""One chat request for several models, as LiteLLM's proxy takes it: `"model": "a, b"` (names
separated by commas).

- With `"fastest_response": true`: the request goes to every model at once; the first answer (for
  a stream, the first model whose stream started) is returned and the other calls are cancelled
  (LiteLLM's `abatch_completion_fastest_response`). Only when every model fails is the last
  failure returned.
- Without it: the request goes to every model at once and the answer is a JSON list with each
  model's answer in the order named, a failure as its error envelope (LiteLLM's
  `abatch_completion`). Streaming needs `fastest_response`: a list of streams has no wire form.

Each model's call is a call of its own: admitted against the key's limits and budgets, recorded
with its own usage and cost, under the request's id with `-1`, `-2`, ... appended (the answer's
x-request-id is the request's id). A cancelled call is recorded as a 499."""

from __future__ import annotations

import asyncio

from ..core import Answer, Disconnected, Gateway, Inference, Stream, Watch
from ..domain import Principal
from ..errors import BadRequest, as_keystile
from .base import Dialect, Endpoint, Incoming, Reply

MAX_MODELS = 8
RECORD_ID_MAX = 64
"""The length of a usage record's id (spend_logs.request_id); a longer one would be cut, losing the suffix."""


def names_several(body: dict) -> bool:
    """Whether a chat body names several models (LiteLLM's comma-separated form)."""
    model = body.get("model")
    return isinstance(model, str) and "," in model


async def several(dialect: Dialect, gateway: Gateway, principal: Principal, endpoint: Endpoint,
                  incoming: Incoming, body: dict) -> Reply:
    fastest = body.pop("fastest_response", False)
    names = [name.strip() for name in body["model"].split(",")]
    problem = ("fastest_response must be true or false" if not isinstance(fastest, bool) else
               "a model name between commas is empty" if not all(names) else
               f"at most {MAX_MODELS} models at once" if len(names) > MAX_MODELS else
               "several models with stream: true needs fastest_response: true (a list of streams has no wire form)"
               if body.get("stream") is True and not fastest else None)
    if problem is not None:
        exc = BadRequest(problem, param="fastest_response" if "fastest" in problem else "model")
        gateway.reject(principal, incoming.path, exc, model=body["model"][:255], request_id=incoming.request_id)
        raise exc
    # Each call's record id is the request's with `-<n>`; an id too long for that is replaced by one of
    # the gateway's (short) own, so the records stay apart.
    base = incoming.request_id if len(incoming.request_id) + 2 <= RECORD_ID_MAX else gateway.new_request_id()
    requests = []
    for i, name in enumerate(names, 1):
        request = dialect.parse_recorded(gateway, principal, endpoint, incoming, {**body, "model": name})
        request.request_id = f"{base}-{i}"
        requests.append(request)
    assert endpoint.operation is not None
    # One reader of the client's hang-up for all the calls (ASGI `receive` is not for several readers).
    gone = asyncio.Event()
    watcher = asyncio.ensure_future(_watch(incoming.disconnected, gone)) if incoming.disconnected else None
    try:
        calls = [asyncio.ensure_future(gateway.call(principal, endpoint.operation, r,
                                                    disconnected=gone.wait if watcher else None))
                 for r in requests]
        if fastest:
            return await _fastest(dialect, endpoint, requests, calls)
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        if watcher is not None:
            watcher.cancel()
    parts = []
    for request, result in zip(requests, results):
        if isinstance(result, (Disconnected, asyncio.CancelledError)):
            raise result
        if isinstance(result, BaseException):
            parts.append(dialect.error(as_keystile(result)))  # type: ignore[arg-type]
        else:
            parts.append(dialect.render(endpoint, request, result))  # type: ignore[arg-type]
    return Reply(body=b"[" + b",".join(parts) + b"]")


async def _watch(disconnected: Watch, gone: asyncio.Event) -> None:
    await disconnected()
    gone.set()


async def _fastest(dialect: Dialect, endpoint: Endpoint, requests: list[Inference],
                   calls: list[asyncio.Future[Answer | Stream]]) -> Reply:
    winner: int | None = None
    failure: BaseException | None = None
    pending = set(calls)
    try:
        while pending and winner is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for i, call in enumerate(calls):
                if call not in done or call.cancelled():
                    continue
                if call.exception() is not None:
                    failure = call.exception()
                elif winner is None:
                    winner = i
                else:  # finished in the same instant as the winner: nobody takes it
                    result = call.result()
                    if isinstance(result, Stream):
                        await result.aclose()
    finally:
        for call in pending:
            call.cancel()
        for call in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(call, Stream):
                await call.aclose()
    if winner is None:
        assert failure is not None
        raise failure
    return dialect.reply(endpoint, requests[winner], calls[winner].result())
