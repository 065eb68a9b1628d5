"""Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`), for Claude Code
and Anthropic SDK code, served at the gateway root (and under `/anthropic`).

To a model whose deployments all take Anthropic's format (`anthropic/…`, fallbacks included) the
request is relayed as it is (the core's `messages` operation): the body, the client's
anthropic-version / anthropic-beta, and back the answer, each event and the upstream's errors
unchanged. To any other model it is translated onto chat: system (also mid-conversation system
messages, as Claude Code sends them), text, image and document-text blocks; tools, tool_use and
tool_result; stop_sequences, max_tokens, temperature, top_p, top_k, metadata.user_id. `thinking`
is accepted and ignored (the chat backends do not think in Anthropic's way), as are thinking
blocks sent back in the history. Anthropic's server tools (web search, code execution, ... : a
`type` with a version) are dropped: no chat backend can run them. Answers and streams come back in
Anthropic's shape, streams with its event sequence and a `ping` during long silences; errors in
its envelope."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass

import orjson

from backends.base import Chunk, Usage

from ..core import Answer, Gateway, Inference, Operation, Stream, unless_disconnected
from ..core.estimates import estimate_prompt_tokens
from ..domain import Principal
from ..errors import BadRequest, KeystileError
from ..protocol.anthropic import CountTokensRequest, MessagesRequest
from .base import Dialect, Endpoint, Event, Incoming, Reply, parse_json, read_json, validate
from .chat import ChunkReader, StopScan, Text, ToolArgs, ToolCall, ToolStart, data_url_image, parsed_arguments, \
    read_answer, url_image, with_heartbeat

FORWARDED = ("anthropic-version", "anthropic-beta")
"""The client's headers a relayed request carries on to an Anthropic upstream."""
_TYPE = re.compile(rb'"type"\s*:\s*"([a-z_]+)"')
PING_S = 5.0
"""Seconds of silence in a stream after which a `ping` event is sent."""
PING: Event = (b"ping", b'{"type":"ping"}')
"""Anthropic's keep-alive event (its SDK skips it, also before `message_start`)."""

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
               504: "timeout_error"}


@dataclass(slots=True)
class MessagesCall(Inference):
    """The chat request a Messages request became, the model name the client asked for, and its
    stop sequences: they are applied here, not sent on as `stop`, because a chat answer's
    finish_reason "stop" does not say whether (or which) one matched. A request with stop sequences
    is streamed from the core (`stream`) also when its client wants JSON (`client_streams`), so the
    upstream is closed as soon as one matches."""

    model: str = ""
    stops: tuple[str, ...] = ()
    client_streams: bool = False


# -- Anthropic request -> chat request ---------------------------------------------------------------


def _text_of(blocks: str | list, param: str) -> str:
    """A system prompt or tool result: a string, or text blocks joined by newlines."""
    if isinstance(blocks, str):
        return blocks
    texts = []
    for i, block in enumerate(blocks):
        if block.get("type") != "text":
            raise BadRequest(f"{param}.{i}: only text blocks are supported here, not {block.get('type')!r}",
                             param=f"{param}.{i}.type")
        texts.append(str(block.get("text") or ""))
    return "\n".join(texts)


def _image(block: dict, param: str) -> dict:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return data_url_image(str(source.get("media_type") or "image/png"), str(source.get("data") or ""))
    if source.get("type") == "url":
        return url_image(str(source.get("url") or ""))
    raise BadRequest(f"{param}.source: images are sent as base64 or url sources", param=f"{param}.source")


def _tool_result(block: dict, param: str) -> tuple[dict, list[dict]]:
    """A tool message, and the images of the result (sent after it in a user message)."""
    content = block.get("content")
    images: list[dict] = []
    text = ""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if part.get("type") == "image":
                images.append(_image(part, f"{param}.content.{i}"))
            else:
                texts.append(_text_of([part], f"{param}.content"))
        text = "\n".join(texts)
    if block.get("is_error") and not text.startswith("Error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": str(block.get("tool_use_id") or ""), "content": text}, images


def _user(blocks: list[dict], param: str) -> list[dict]:
    tools: list[dict] = []
    parts: list[dict] = []
    for i, block in enumerate(blocks):
        kind, where = block.get("type"), f"{param}.{i}"
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text") or "")})
        elif kind == "image":
            parts.append(_image(block, where))
        elif kind == "tool_result":
            message, images = _tool_result(block, where)
            tools.append(message)
            parts.extend(images)
        elif kind == "document" and (block.get("source") or {}).get("type") == "text":
            parts.append({"type": "text", "text": str(block["source"].get("data") or "")})
        elif kind not in ("thinking", "redacted_thinking"):
            raise BadRequest(f"{where}: content blocks of type {kind!r} are not supported by this gateway",
                             param=f"{where}.type")
    if not parts:
        return tools
    if all(p["type"] == "text" for p in parts):
        return [*tools, {"role": "user", "content": "\n".join(p["text"] for p in parts)}]
    return [*tools, {"role": "user", "content": parts}]


def _assistant(blocks: list[dict], param: str) -> dict:
    texts, calls = [], []
    for i, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind in ("tool_use", "server_tool_use"):
            calls.append({"id": str(block.get("id") or ""), "type": "function", "function": {
                "name": str(block.get("name") or ""), "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind not in ("thinking", "redacted_thinking"):
            raise BadRequest(f"{param}.{i}: assistant content blocks of type {kind!r} are not supported",
                             param=f"{param}.{i}.type")
    message: dict = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _messages(body: dict) -> list[dict]:
    out: list[dict] = []
    if body.get("system"):
        out.append({"role": "system", "content": _text_of(body["system"], "system")})
    for i, m in enumerate(body["messages"]):
        content, param = m["content"], f"messages.{i}.content"
        if m["role"] == "system":  # Claude Code's mid-conversation system messages
            out.append({"role": "system", "content": _text_of(content, param)})
        elif isinstance(content, str):
            out.append({"role": m["role"], "content": content})
        elif m["role"] == "user":
            out.extend(_user(content, param))
        else:
            out.append(_assistant(content, param))
    return out


def _tools(body: dict, chat: dict) -> None:
    tools = [{"type": "function", "function": {
        "name": t["name"], **({"description": t["description"]} if t.get("description") else {}),
        "parameters": t.get("input_schema") or {"type": "object", "properties": {}}}}
        for t in body.get("tools") or () if t.get("type") in (None, "custom")]
    if not tools:
        return
    chat["tools"] = tools
    choice = body.get("tool_choice")
    if choice:
        kind = choice["type"]
        chat["tool_choice"] = ({"type": "function", "function": {"name": choice.get("name") or ""}} if kind == "tool"
                               else {"auto": "auto", "any": "required", "none": "none"}[kind])
        if choice.get("disable_parallel_tool_use"):
            chat["parallel_tool_calls"] = False


def to_chat(body: dict) -> dict:
    """A Messages request body (validated) as an OpenAI chat request body (without its
    stop_sequences: MessagesCall applies them)."""
    chat: dict = {"model": body["model"], "messages": _messages(body)}
    if body.get("max_tokens") is not None:
        chat["max_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            chat[name] = body[name]
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        chat["user"] = user
    _tools(body, chat)
    if body.get("stream") is True:
        chat["stream"] = True
    return chat


# -- chat answer -> Anthropic message ----------------------------------------------------------------


def _usage(prompt: int, completion: int, cached: int) -> dict:
    return {"input_tokens": max(prompt - cached, 0), "output_tokens": completion,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def _message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def _event(name: bytes, data: dict) -> Event:
    return name, orjson.dumps(data)


class Anthropic(Dialect):
    name = "anthropic"
    prefixes = ("", "/anthropic")
    endpoints = (
        Endpoint("/v1/messages", "chat", MessagesRequest, "Anthropic Messages (JSON or SSE stream)"),
        Endpoint("/v1/messages/count_tokens", None, CountTokensRequest, "Anthropic token count"),
    )

    def parse(self, endpoint: Endpoint, body: dict) -> Inference:
        validate(MessagesRequest, body)
        stops = tuple(s for s in body.get("stop_sequences") or () if s)
        streams = body.get("stream") is True
        return MessagesCall(to_chat(body), stream=streams or bool(stops), model=body["model"], stops=stops,
                            client_streams=streams)

    def render(self, endpoint: Endpoint, request: Inference, answer: Answer) -> bytes:
        r = read_answer(answer.body)
        return _message(request, r.text, r.tool_calls, STOP_REASONS.get(r.finish_reason or "stop", "end_turn"), None,
                        _usage(r.prompt_tokens, r.completion_tokens, r.cached_tokens))

    async def respond(self, gateway: Gateway, principal: Principal, operation: Operation, request: Inference,
                      incoming: Incoming, reply: Callable[[Answer | Stream], Reply]) -> Reply:
        if not isinstance(request, MessagesCall) or request.client_streams or not request.stops:
            return await super().respond(gateway, principal, operation, request, incoming, reply)
        # JSON with stop sequences: read the core's stream until one matches, answer the message.
        stream = await gateway.call(principal, operation, request, disconnected=incoming.disconnected)
        assert isinstance(stream, Stream)
        reader = _Reader(request.stops)

        async def collect() -> None:
            async for chunk in stream:
                for _ in reader.read(chunk):
                    pass
                if reader.matched is not None:
                    return
            for _ in reader.end():
                pass
        try:
            await unless_disconnected(incoming.disconnected, collect(), gateway.watches)
        finally:
            await stream.aclose()
        return Reply(headers=stream.headers, body=_message(request, reader.text, reader.chat.result.tool_calls,
                                                           reader.stop_reason(), reader.matched, _charged(stream)))

    async def events(self, endpoint: Endpoint, request: Inference, stream: Stream) -> AsyncGenerator[Event, None]:
        yield _event(b"message_start", {"type": "message_start", "message": {
            "id": _message_id(), "type": "message", "role": "assistant", "model": _model(request), "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": _usage(estimate_prompt_tokens(request.body), 0, 0)}})
        yield PING
        blocks = _Blocks()
        reader = _Reader(request.stops if isinstance(request, MessagesCall) else ())
        async with contextlib.aclosing(with_heartbeat(stream, PING_S)) as chunks:
            async for chunk in chunks:
                if chunk is None:
                    yield PING
                    continue
                for delta in reader.read(chunk):
                    for event in blocks.add(delta):
                        yield event
                if reader.matched is not None:
                    break
        for delta in reader.end():
            for event in blocks.add(delta):
                yield event
        for event in blocks.close():
            yield event
        await stream.aclose()  # settled: the upstream is closed (a stop sequence matched) and usage known
        yield _event(b"message_delta", {
            "type": "message_delta", "delta": {"stop_reason": reader.stop_reason(), "stop_sequence": reader.matched},
            "usage": _charged(stream)})
        yield _event(b"message_stop", {"type": "message_stop"})

    def stream_error(self, err: KeystileError) -> Event:
        return b"error", self.error(err)

    def keepalive(self) -> Event:
        return PING

    def error(self, err: KeystileError) -> bytes:
        raw = getattr(err, "raw", None)  # a relayed upstream's own error: unchanged
        if raw is not None:
            return raw
        return orjson.dumps({"type": "error", "error": {"type": ERROR_TYPES.get(err.status, "api_error"),
                                                        "message": err.message}})

    async def handle(self, gateway: Gateway, principal: Principal, endpoint: Endpoint, incoming: Incoming) -> Reply:
        if endpoint.operation is None:
            return await self._count_tokens(gateway, principal, incoming)
        body = await read_json(gateway, principal, incoming)
        model = body.get("model")
        if isinstance(model, str) and gateway.relays(principal, model, "anthropic"):
            return await self._relay(gateway, principal, incoming, body)
        return await self.serve(gateway, principal, endpoint, incoming, body)

    async def _count_tokens(self, gateway: Gateway, principal: Principal, incoming: Incoming) -> Reply:
        """To a model whose deployments all take Anthropic's format: relayed (Anthropic's own count,
        with the client's anthropic-version / -beta); to any other, the model's tokenizer or the
        gateway's estimate."""
        body = parse_json(await incoming.read_body())
        validate(CountTokensRequest, body)
        if gateway.relays(principal, body["model"], "anthropic"):
            return Reply(body=await gateway.relay_count(principal, {**body, "extra_headers": _forwarded(incoming)}))
        count = await gateway.count_prompt(principal, to_chat(body))
        return Reply(body=orjson.dumps({"input_tokens": count}))

    async def _relay(self, gateway: Gateway, principal: Principal, incoming: Incoming, body: dict) -> Reply:
        """To a model whose deployments all take Anthropic's format: the body as it is, with the
        client's anthropic-version / anthropic-beta; the answer, events and errors as they come."""
        request = Inference({**body, "extra_headers": _forwarded(incoming)}, stream=body.get("stream") is True,
                            route=incoming.path, request_id=incoming.request_id)
        return await self.respond(gateway, principal, "messages", request, incoming, _relay_reply)


def _relay_reply(result: Answer | Stream) -> Reply:
    """A relayed answer or stream as it came."""
    if isinstance(result, Stream):
        return Reply(headers=result.headers, media_type=b"text/event-stream", events=_relayed(result),
                     close=result.aclose)
    return Reply(headers=result.headers, body=result.body)


def _forwarded(incoming: Incoming) -> dict[str, str]:
    return {k: v for k in FORWARDED if (v := incoming.headers.get(k))}


async def _relayed(stream: Stream) -> AsyncGenerator[Event, None]:
    async for chunk in stream:
        found = _TYPE.search(chunk.data, 0, 60)
        yield (found.group(1) if found else None), chunk.data


def _message(request: Inference, text: str, tool_calls: list[ToolCall], stop_reason: str, stop_sequence: str | None,
             usage: dict) -> bytes:
    content: list[dict] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": c.id, "name": c.name, "input": parsed_arguments(c.arguments)}
                for c in tool_calls]
    return orjson.dumps({"id": _message_id(), "type": "message", "role": "assistant", "model": _model(request),
                         "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
                         "usage": usage})


def _charged(stream: Stream) -> dict:
    """Anthropic's usage object for what a settled stream is charged."""
    u = stream.usage() or Usage()
    return _usage(u.prompt_tokens, u.completion_tokens, u.cache_read_tokens)


class _Reader:
    """A chat stream's deltas with the request's stop sequences applied to its text."""

    def __init__(self, stops: tuple[str, ...]):
        self.chat = ChunkReader()
        self.scan = StopScan(stops) if stops else None
        self.text = ""

    @property
    def matched(self) -> str | None:
        return self.scan.matched if self.scan is not None else None

    def stop_reason(self) -> str:
        if self.matched is not None:
            return "stop_sequence"
        return STOP_REASONS.get(self.chat.result.finish_reason or "stop", "end_turn")

    def read(self, chunk: Chunk) -> Iterator[Text | ToolStart | ToolArgs]:
        for delta in self.chat.read(chunk):
            if self.scan is None:
                yield delta
                continue
            if not isinstance(delta, Text):
                yield from self.end()  # a tool call ends the text: what was held back is text
                yield delta
                continue
            text = self.scan.feed(delta.text)
            if text:
                self.text += text
                yield Text(text)
            if self.scan.matched is not None:
                return

    def end(self) -> Iterator[Text]:
        """The text held back, at the end of the text (no stop sequence matched)."""
        held = self.scan.flush() if self.scan is not None and self.scan.matched is None else ""
        if held:
            self.text += held
            yield Text(held)


def _model(request: Inference) -> str:
    return request.model if isinstance(request, MessagesCall) else str(request.body.get("model") or "")


class _Blocks:
    """The content blocks of a streamed message: each delta opens, continues or closes one."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None  # "text" or "tool_use"
        self.tool = -1  # the position of the open tool call

    def _start(self, kind: str, block: dict) -> Event:
        self.index += 1
        self.open = kind
        return _event(b"content_block_start", {"type": "content_block_start", "index": self.index,
                                               "content_block": block})

    def add(self, delta: Text | ToolStart | ToolArgs) -> Iterator[Event]:
        if isinstance(delta, Text):
            if self.open != "text":
                yield from self.close()
                yield self._start("text", {"type": "text", "text": ""})
            yield _event(b"content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                  "delta": {"type": "text_delta", "text": delta.text}})
        elif isinstance(delta, ToolStart):
            yield from self.close()
            self.tool = delta.index
            yield self._start("tool_use", {"type": "tool_use", "id": delta.id, "name": delta.name, "input": {}})
        elif self.open == "tool_use" and delta.index == self.tool:
            yield _event(b"content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                  "delta": {"type": "input_json_delta", "partial_json": delta.fragment}})

    def close(self) -> Iterator[Event]:
        if self.open is not None:
            self.open = None
            yield _event(b"content_block_stop", {"type": "content_block_stop", "index": self.index})


DIALECT = Anthropic()
