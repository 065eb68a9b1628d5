"""Reading the core's OpenAI chat answers and chunks, for the dialects that translate them
(anthropic.py, responses.py): a whole answer as text, tool calls, finish reason and usage; a stream
as plain deltas (text, a tool call starting, a piece of its arguments); and a stream with a
heartbeat, for dialects that keep a quiet connection alive. Also the image parts both translate
their clients' images into. No DIALECT here: this module is a helper, not a wire format."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import orjson

from backends.base import Chunk

T = TypeVar("T")


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str = ""


@dataclass(slots=True)
class ChatResult:
    """One choice of a chat answer, or all the deltas of a stream added up."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict = field(default_factory=dict)  # OpenAI's usage object as the upstream sent it

    @property
    def prompt_tokens(self) -> int:
        return int(self.usage.get("prompt_tokens") or 0)

    @property
    def completion_tokens(self) -> int:
        return int(self.usage.get("completion_tokens") or 0)

    @property
    def cached_tokens(self) -> int:
        details = self.usage.get("prompt_tokens_details") or {}
        return int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0


def read_answer(body: bytes) -> ChatResult:
    """The first choice of an OpenAI chat completion body."""
    data = orjson.loads(body)
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    calls = [ToolCall(str(c.get("id") or f"call_{i}"), str((c.get("function") or {}).get("name") or ""),
                      str((c.get("function") or {}).get("arguments") or ""))
             for i, c in enumerate(message.get("tool_calls") or [])]
    return ChatResult(message.get("content") or "", calls, choice.get("finish_reason"), data.get("usage") or {})


class Text(NamedTuple):
    text: str


class ToolStart(NamedTuple):
    index: int  # the call's position among this answer's tool calls
    id: str
    name: str


class ToolArgs(NamedTuple):
    index: int
    fragment: str


Delta = Text | ToolStart | ToolArgs


class ChunkReader:
    """Turns the chunks of a chat stream into plain deltas, keeping the whole in `result`."""

    def __init__(self) -> None:
        self.result = ChatResult()
        self._calls: dict[int, int] = {}  # the upstream's tool_call index -> our position

    def read(self, chunk: Chunk) -> Iterator[Delta]:
        try:
            data = orjson.loads(chunk.data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict):
            return
        if data.get("usage"):
            self.result.usage = data["usage"]
        for choice in data.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            if choice.get("finish_reason"):
                self.result.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                self.result.text += text
                yield Text(text)
            for call in delta.get("tool_calls") or ():
                yield from self._tool_delta(call)

    def _tool_delta(self, call: dict) -> Iterator[Delta]:
        function = call.get("function") or {}
        upstream_index = call.get("index", len(self._calls))
        position = self._calls.get(upstream_index)
        if position is None:
            position = self._calls[upstream_index] = len(self.result.tool_calls)
            started = ToolCall(str(call.get("id") or f"call_{position}"), str(function.get("name") or ""))
            self.result.tool_calls.append(started)
            yield ToolStart(position, started.id, started.name)
        fragment = function.get("arguments")
        if fragment:
            self.result.tool_calls[position].arguments += fragment
            yield ToolArgs(position, fragment)


class StopScan:
    """Stop sequences applied to streamed text, so a dialect knows which one matched (OpenAI's
    finish_reason "stop" does not say): text is released once it cannot be the start of a stop
    sequence; the first sequence to complete ends the text before it and is kept in `matched`."""

    def __init__(self, stops: Iterable[str]):
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """The text that may go out now (after a match: what came before it)."""
        text = self.held + text
        found = min(((i + len(s), i, s) for s in self.stops if (i := text.find(s)) >= 0), default=None)
        if found is not None:
            _, start, self.matched = found
            self.held = ""
            return text[:start]
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(text) + 1))
                    if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """The text held back (at the end of the text: it was no stop sequence after all)."""
        held, self.held = self.held, ""
        return held


async def with_heartbeat(source: AsyncIterator[T], interval: float) -> AsyncIterator[T | None]:
    """The items of `source`, and None each time `interval` seconds pass without one (for a
    dialect to send its keep-alive event). The pending read is cancelled if this is closed."""
    items = source.__aiter__()
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(items.__anext__())
            done, _ = await asyncio.wait((pending,), timeout=interval)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            try:
                await pending
            except BaseException:  # cancelled or failed: the source's own settlement ran
                pass


def data_url_image(media_type: str, data: str) -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}


def url_image(url: str, detail: str | None = None) -> dict:
    image: dict = {"url": url}
    if detail:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def parsed_arguments(raw: str) -> dict:
    """A model's tool-call arguments (a JSON string) as an object; text that is not a JSON object
    is kept whole under "arguments" rather than lost."""
    try:
        value = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        return {"arguments": raw}
    return value if isinstance(value, dict) else {"arguments": value}
