"""What a dialect is: one wire format, translated to and from the core (proxy/core/).

A dialect names its endpoints (path, the core operation, the request's wire model for validation
and /docs) and says, with plain values:

- `parse`: the request body (a JSON object) -> the core's `Inference` (an OpenAI-shaped body);
- `answer`: the core's `Answer` (OpenAI JSON bytes) -> the body its clients expect;
- `events`: the core's `Stream` of chunks -> SSE events `(event name or None, data)`;
- `error` / `stream_error`: a classified failure (errors.KeystileError) -> its error envelope.

The edge (proxy/edge/) does the rest: it authenticates, reads the body within the size limit,
watches for the client hanging up, calls `handle`, frames SSE and sends the bytes. `handle` is the
request -> core -> answer path; a dialect that is not one request for one answer (an async job
API, say) overrides it and still only uses `gateway.call`. A dialect that speaks OpenAI's format
relays the bytes untouched; one that translates parses each chunk itself, lazily, in `events`."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
from pydantic import BaseModel, ValidationError

from ..core import STREAMABLE, Answer, Gateway, Inference, Operation, Stream, Watch
from ..domain import Principal
from ..errors import BadRequest, KeystileError, error_body, from_validation

if TYPE_CHECKING:
    from ..services import Services

PARAM = re.compile(r"\{(\w+)\}")
"""A parameter in a route's path (`{job_id}`); a dialect's prefix may have them too (`/v2/{endpoint_id}`)."""

Event = tuple[bytes | None, bytes]
"""One server-sent event: its `event:` name (None for none) and its `data:` payload."""
COMMENT = b":"
"""The name of an Event that is an SSE comment line (`: data`), which every SSE client ignores; the
edge frames it for every dialect."""
KEEPALIVE: Event = (COMMENT, b"keep-alive")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A route of a dialect: `path` under each of the dialect's prefixes, the core operation it asks
    for, and the wire model its JSON body must satisfy (also what /docs shows). Path and prefix may
    hold parameters, `/v2/{endpoint_id}` + `/status/{job_id}`, handed to `handle` in
    `Incoming.params`; a route without a body (a GET) has no model, and its dialect overrides `handle`."""

    path: str
    operation: Operation | None
    model: type[BaseModel] | None
    summary: str = ""
    method: str = "POST"


@dataclass(slots=True)
class Incoming:
    """A request as the edge hands it to a dialect: its path, a reader of its body (within the
    size limit; raises the gateway's errors, or core.Disconnected), the client's hang-up, the
    path parameter if the endpoint has one, the query string, the request's headers (names in
    lower case), for a dialect that forwards some of them, the id the edge gave the request
    (its answer's x-request-id; an Inference made from it carries it to the usage record), and
    `commit`: the edge sending a Reply at once, in a task of its own, while the dialect's call
    still runs (a stream committed before its first chunk; the dialect then returns a Reply `sent`)."""

    path: str
    read_body: Callable[[], Awaitable[bytes]]
    disconnected: Watch | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    query: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    commit: Callable[[Reply], asyncio.Future[None]] | None = None

    def header(self, name: bytes) -> bytes | None:
        """A request header's value (`name` in lower case), or None."""
        value = self.headers.get(name.decode("latin-1"))
        return None if value is None else value.encode("latin-1")


@dataclass(slots=True)
class Reply:
    """What the edge sends: a whole body, or SSE `events` (then `close` ends the core's stream,
    settling it, whatever happened to the events); nothing when `sent` (the answer went through
    `Incoming.commit`)."""

    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    media_type: bytes = b"application/json"
    events: AsyncGenerator[Event, None] | None = None
    close: Callable[[], Awaitable[None]] | None = None
    sent: bool = False


def parse_json(raw: bytes) -> dict:
    """A request body that must be one JSON object."""
    if not raw:
        raise BadRequest("request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


async def read_json(gateway: Gateway, principal: Principal, incoming: Incoming) -> dict:
    """The request's body as a JSON object; a body that cannot be read or is not one is recorded
    (every authenticated request leaves a usage record) and raised."""
    try:
        return parse_json(await incoming.read_body())
    except BaseException as exc:
        gateway.reject(principal, incoming.path, exc, request_id=incoming.request_id)
        raise


def default_model(services: Services) -> str:
    """The model a dialect whose requests may leave `model` out uses: `keystile_settings.default_model`,
    else the first in model_list ("" when there is none)."""
    names = [e.model_name for e in services.config.model_list]
    return services.options.default_model or (names[0] if names else "")


def validate(model: type[BaseModel], data: dict) -> BaseModel:
    """`data` checked against a wire model; a BadRequest naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from exc


class Dialect:
    """Base of every dialect; a subclass sets `name`, `prefixes`, `endpoints` and overrides what
    differs from OpenAI's format (see the module docstring)."""

    name: str = ""
    prefixes: tuple[str, ...] = ("",)
    endpoints: tuple[Endpoint, ...] = ()

    async def start(self, services: Services) -> None:
        """Called once the app's Services exist: a dialect with state of its own (a job queue)
        builds it here, never at import. The instance is the app's own: `load()` makes a fresh
        one per app when a module's DIALECT is a class."""

    async def aclose(self) -> None:
        """Called at shutdown, before the Services close."""

    def frame(self, event: Event) -> bytes:
        """One SSE event on the wire (a dialect whose clients expect other spacing overrides it)."""
        name, data = event
        if name is None:
            return b"data: " + data + b"\n\n"
        return b"event: " + name + b"\ndata: " + data + b"\n\n"

    def parse(self, endpoint: Endpoint, body: dict) -> Inference:
        """Validate and translate; raise BadRequest (or a pydantic ValidationError) naming the field."""
        raise NotImplementedError

    def answer(self, endpoint: Endpoint, answer: Answer) -> bytes:
        return answer.body

    def render(self, endpoint: Endpoint, request: Inference, answer: Answer) -> bytes:
        """The body of a completed call; a translating dialect that needs the request it parsed
        (to name tools back, say) overrides this instead of `answer`."""
        return self.answer(endpoint, answer)

    def events(self, endpoint: Endpoint, request: Inference, stream: Stream) -> AsyncGenerator[Event, None]:
        """An async generator over `stream`; the edge closes it, and the stream, when done."""
        raise NotImplementedError

    def error(self, err: KeystileError) -> bytes:
        return error_body(err)

    def stream_error(self, err: KeystileError) -> Event:
        """The event that ends a stream which failed after it started (the status is sent already)."""
        return None, self.error(err)

    def keepalive(self) -> Event:
        """What is sent while a committed stream waits for its first chunk: an SSE comment."""
        return KEEPALIVE

    async def handle(self, gateway: Gateway, principal: Principal, endpoint: Endpoint, incoming: Incoming) -> Reply:
        return await self.serve(gateway, principal, endpoint, incoming, await read_json(gateway, principal, incoming))

    async def serve(self, gateway: Gateway, principal: Principal, endpoint: Endpoint, incoming: Incoming,
                    body: dict) -> Reply:
        """One request body (a JSON object) through `parse`, the core and `render` or `events`; for a
        dialect whose `handle` reads the body itself (to choose a path by what it names)."""
        assert endpoint.operation is not None, f"{endpoint.path}: a route without an operation needs its own handle"
        request = self.parse_recorded(gateway, principal, endpoint, incoming, body)
        return await self.respond(gateway, principal, endpoint.operation, request, incoming,
                                  lambda result: self.reply(endpoint, request, result))

    def parse_recorded(self, gateway: Gateway, principal: Principal, endpoint: Endpoint, incoming: Incoming,
                       body: dict) -> Inference:
        """`parse`, with the request's route and id set; a body it refuses is recorded (under the
        model it named, if any) and raised."""
        try:
            request = self.parse(endpoint, body)
        except BaseException as exc:
            model = body.get("model")
            gateway.reject(principal, incoming.path, exc, model=model if isinstance(model, str) else "",
                           request_id=incoming.request_id)
            raise
        request.route, request.request_id = incoming.path, incoming.request_id
        return request

    def reply(self, endpoint: Endpoint, request: Inference, result: Answer | Stream) -> Reply:
        """What the edge sends for the core's answer or stream to `request`."""
        if isinstance(result, Stream):
            return Reply(headers=result.headers, media_type=b"text/event-stream",
                         events=self.events(endpoint, request, result), close=result.aclose)
        return Reply(headers=result.headers, body=self.render(endpoint, request, result))

    async def respond(self, gateway: Gateway, principal: Principal, operation: Operation, request: Inference,
                      incoming: Incoming, reply: Callable[[Answer | Stream], Reply]) -> Reply:
        """`request` through the core, its answer or stream made a Reply by `reply`. A stream whose
        first chunk takes longer than the gateway's `stream_keepalive` (a long prefill) is committed
        then, so proxies in between do not time out: 200 SSE at once, `keepalive()` every as many
        seconds until the stream starts, and a failure after that as `stream_error`. Until then
        nothing is sent, and retries and fallbacks run as they do for any call.

        The call runs here, in the request's own task, with a deadline (`gateway.keepalives`): when
        it passes, the committed answer goes out through `incoming.commit` (the edge's sender, in a
        task of its own) while the call goes on here, and the call's outcome is handed to it when it
        comes. A stream that starts in time costs no task and no timer of its own."""
        work = gateway.call(principal, operation, request, disconnected=incoming.disconnected)
        deadlines, commit = gateway.keepalives, incoming.commit
        if not (request.stream and deadlines is not None and operation in STREAMABLE and commit is not None):
            return reply(await work)
        committed: list[asyncio.Future] = []  # once committed: the call's outcome to come, the sending

        def start() -> None:
            call = asyncio.get_running_loop().create_future()
            committed.extend((call, commit(Reply(media_type=b"text/event-stream",
                                                 events=self._waiting(call, deadlines.delay, reply)))))
        deadline = deadlines.add(start)
        try:
            result = await work
        except BaseException as exc:
            deadlines.remove(deadline)
            if not committed:
                raise
            await _hand_over(*committed, exc)
            return Reply(sent=True)
        deadlines.remove(deadline)
        if not committed:
            return reply(result)
        await _hand_over(*committed, result)
        return Reply(sent=True)

    async def _waiting(self, call: asyncio.Future, wait: float,
                       reply: Callable[[Answer | Stream], Reply]) -> AsyncGenerator[Event, None]:
        """A committed stream: keep-alives until `call` is done, then its events (or its failure,
        raised for the edge to send as `stream_error`). Closing this (the client went away) closes
        the stream, or drops the outcome still to come (the call itself ends by the core's watch on
        the client, as every call does)."""
        try:
            while not call.done():
                yield self.keepalive()
                await asyncio.wait((call,), timeout=wait)
            events = reply(call.result()).events
            assert events is not None, "a streamed request was answered as a whole"
            async with contextlib.aclosing(events) as relayed:
                async for event in relayed:
                    yield event
        finally:
            await _cancel(call)
            if not call.cancelled() and call.exception() is None and isinstance(call.result(), Stream):
                await call.result().aclose()


async def _hand_over(call: asyncio.Future, sending: asyncio.Future[None],
                     outcome: Answer | Stream | BaseException) -> None:
    """A committed call's `outcome` to its sending (`Dialect._waiting`, through `call`), then wait
    until that has sent it. A stream nobody takes any more (the client went away) is closed, and
    a request cancelled (the server stopping) cancels its sending."""
    if isinstance(outcome, asyncio.CancelledError):
        sending.cancel()
        raise outcome
    if not call.done():  # else the sending ended first: the client went away
        if isinstance(outcome, BaseException):
            call.set_exception(outcome)
        else:
            call.set_result(outcome)
    try:
        await sending
    finally:
        if not call.cancelled():
            call.exception()  # retrieved, also if the sending never came to read it
        if isinstance(outcome, Stream):
            await outcome.aclose()  # as `_waiting` does (twice does no harm): it may not have started


async def _cancel(call: asyncio.Future) -> None:
    """End a call still running (the core settles it as a client gone) and wait for its settlement."""
    if not call.done():
        call.cancel()
    await asyncio.wait((call,))
    if not call.cancelled():
        call.exception()  # retrieved: it was the client's to see, and the client is gone
