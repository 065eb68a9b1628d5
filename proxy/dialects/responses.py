"""OpenAI's Responses API (`POST /v1/responses`), for Codex CLI and Responses SDK code, translated
onto chat for every backend (the request side is responses_input.py).

Stateless only: `store: true`, `previous_response_id` and `GET /v1/responses/{id}` are refused
with a clear error, as is a WebSocket handshake on `GET /v1/responses` (426, so Codex falls back to
HTTP at once). Answers carry `output[]` message, function_call and custom_tool_call items and
`usage`; streams send OpenAI's ordered events with `sequence_number`s, ending in
`response.completed`, `response.incomplete` (max_output_tokens reached) or `response.failed`."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field

import orjson

from ..core import Answer, Gateway, Inference, Stream
from ..domain import Principal
from ..errors import KeystileError, NotFound, WebSocketRefused, as_keystile
from ..protocol.responses import ResponsesRequest
from .base import Dialect, Endpoint, Event, Incoming, Reply, validate
from .chat import ChatResult, ChunkReader, Text, ToolArgs, ToolStart, parsed_arguments, read_answer
from .responses_input import CUSTOM_INPUT, to_chat


@dataclass(slots=True)
class ResponsesCall(Inference):
    """The chat request a Responses request became, with what its answer echoes back."""

    request: dict = field(default_factory=dict)
    custom: frozenset[str] = frozenset()
    id: str = field(default_factory=lambda: "resp_" + secrets.token_hex(16))
    created_at: int = field(default_factory=lambda: int(time.time()))


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _usage(r: ChatResult) -> dict:
    return {"input_tokens": r.prompt_tokens, "input_tokens_details": {"cached_tokens": r.cached_tokens},
            "output_tokens": r.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": r.prompt_tokens + r.completion_tokens}


def _status(r: ChatResult | None) -> str:
    return "incomplete" if r is not None and r.finish_reason == "length" else "completed"


def response_object(call: ResponsesCall, status: str, output: list[dict], result: ChatResult | None,
                    error: dict | None = None) -> dict:
    req = call.request
    return {
        "id": call.id, "object": "response", "created_at": call.created_at, "status": status, "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": req.get("instructions"), "max_output_tokens": req.get("max_output_tokens"),
        "model": req.get("model"), "output": output, "parallel_tool_calls": req.get("parallel_tool_calls", True),
        "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": False,
        "temperature": req.get("temperature"), "text": req.get("text") or {"format": {"type": "text"}},
        "tool_choice": req.get("tool_choice") or "auto", "tools": req.get("tools") or [],
        "top_p": req.get("top_p"), "truncation": "disabled", "metadata": req.get("metadata") or {},
        "usage": _usage(result) if result is not None and status != "in_progress" else None,
        "user": req.get("user"),
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> dict:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call_id: str, name: str, value: str, custom: bool, status: str = "completed") -> dict:
    if custom:
        return {"id": item_id, "type": "custom_tool_call", "status": status, "call_id": call_id, "name": name,
                "input": value}
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": value}


def _custom_input(arguments: str) -> str:
    value = parsed_arguments(arguments).get(CUSTOM_INPUT, arguments)
    return value if isinstance(value, str) else orjson.dumps(value).decode()


class Responses(Dialect):
    name = "responses"
    prefixes = ("/v1", "/openai/v1")
    endpoints = (
        Endpoint("/responses", "chat", ResponsesRequest, "Responses API, stateless (JSON or SSE stream)"),
        Endpoint("/responses", None, None, "WebSocket handshake: refused with 426 (use POST)", method="GET"),
        Endpoint("/responses/{response_id}", None, None, "Stored responses: not kept (404)", method="GET"),
    )

    def parse(self, endpoint: Endpoint, body: dict) -> Inference:
        validate(ResponsesRequest, body)
        chat, custom = to_chat(body)
        return ResponsesCall(chat, stream=body.get("stream") is True, request=body, custom=custom)

    def render(self, endpoint: Endpoint, request: Inference, answer: Answer) -> bytes:
        call = _call(request)
        r = read_answer(answer.body)
        output = [_message_item(_item_id("msg"), r.text)] if r.text else []
        for c in r.tool_calls:
            custom = c.name in call.custom
            output.append(_call_item(_item_id("ctc" if custom else "fc"), c.id, c.name,
                                     _custom_input(c.arguments) if custom else c.arguments, custom))
        body = response_object(call, _status(r), output, r)
        body["output_text"] = r.text
        return orjson.dumps(body)

    async def events(self, endpoint: Endpoint, request: Inference, stream: Stream) -> AsyncGenerator[Event, None]:
        out = _Output(_call(request))
        yield out.event("response.created", response=response_object(out.call, "in_progress", [], None))
        yield out.event("response.in_progress", response=response_object(out.call, "in_progress", [], None))
        reader = ChunkReader()
        try:
            async for chunk in stream:
                for delta in reader.read(chunk):
                    for event in out.add(delta):
                        yield event
        except Exception as exc:  # the stream broke after it started: OpenAI's way to say so
            err = as_keystile(exc)
            yield out.event("response.failed", response=response_object(
                out.call, "failed", out.items, None, {"code": err.code or err.type, "message": err.message}))
            return
        for event in out.close():
            yield event
        status = _status(reader.result)
        yield out.event(f"response.{status}", response=response_object(out.call, status, out.items, reader.result))

    def stream_error(self, err: KeystileError) -> Event:
        """A stream that failed before its first event of its own (it was committed while waiting):
        the Responses API's `error` event."""
        return b"error", orjson.dumps({"type": "error", "code": err.code or err.type, "message": err.message,
                                       "param": err.param, "sequence_number": 0})

    async def handle(self, gateway: Gateway, principal: Principal, endpoint: Endpoint, incoming: Incoming) -> Reply:
        if endpoint.operation is not None:
            return await super().handle(gateway, principal, endpoint, incoming)
        if not incoming.params:
            raise WebSocketRefused("this gateway serves the Responses API over HTTP only: POST /v1/responses "
                                   "(WebSocket transport is not supported)")
        raise NotFound("responses are not stored by this gateway (stateless: store: false); there is nothing to "
                       f"fetch for {incoming.params.get('response_id')!r}", code="response_not_found")


def _call(request: Inference) -> ResponsesCall:
    assert isinstance(request, ResponsesCall)
    return request


class _Output:
    """A streamed response's events: sequence numbers, output indexes and item ids kept consistent,
    and the finished items (for the final `response` object)."""

    def __init__(self, call: ResponsesCall):
        self.call = call
        self.seq = 0
        self.items: list[dict] = []
        self.open: dict | None = None  # the item being streamed, in its finished shape
        self.tool = -1

    def event(self, kind: str, **fields: object) -> Event:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return kind.encode(), orjson.dumps(data)

    def _where(self) -> dict:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.items)}

    def add(self, delta: Text | ToolStart | ToolArgs) -> Iterator[Event]:
        if isinstance(delta, Text):
            if self.open is None or self.open["type"] != "message":
                yield from self.close()
                self.open = _message_item(_item_id("msg"), "")
                yield self.event("response.output_item.added", output_index=len(self.items),
                                 item=_message_item(self.open["id"], "", "in_progress"))
                yield self.event("response.content_part.added", **self._where(), content_index=0,
                                 part={"type": "output_text", "text": "", "annotations": []})
            self.open["content"][0]["text"] += delta.text
            yield self.event("response.output_text.delta", **self._where(), content_index=0, delta=delta.text,
                             logprobs=[])
        elif isinstance(delta, ToolStart):
            yield from self.close()
            custom = delta.name in self.call.custom
            self.tool = delta.index
            self.open = _call_item(_item_id("ctc" if custom else "fc"), delta.id, delta.name, "", custom)
            yield self.event("response.output_item.added", output_index=len(self.items),
                             item={**self.open, "status": "in_progress"})
        elif self.open is not None and delta.index == self.tool:
            if self.open["type"] == "custom_tool_call":
                self.open["input"] += delta.fragment  # JSON around the input: sent whole when it is complete
                return
            self.open["arguments"] += delta.fragment
            yield self.event("response.function_call_arguments.delta", **self._where(), delta=delta.fragment)

    def close(self) -> Iterator[Event]:
        item = self.open
        if item is None:
            return
        where = self._where()
        if item["type"] == "message":
            part = item["content"][0]
            yield self.event("response.output_text.done", **where, content_index=0, text=part["text"], logprobs=[])
            yield self.event("response.content_part.done", **where, content_index=0, part=part)
        elif item["type"] == "function_call":
            yield self.event("response.function_call_arguments.done", **where, name=item["name"],
                             arguments=item["arguments"])
        else:
            item["input"] = _custom_input(item["input"])
            yield self.event("response.custom_tool_call_input.delta", **where, delta=item["input"])
            yield self.event("response.custom_tool_call_input.done", **where, input=item["input"])
        yield self.event("response.output_item.done", output_index=len(self.items), item=item)
        self.items.append(item)
        self.open = None


DIALECT = Responses()
