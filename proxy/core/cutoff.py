"""Ending a stream at the completion tokens its admission reserved, for upstreams that ignore
`max_tokens`: the budget hold (and the tpm reservation) assumed at most that many, so relaying more
would let a caller spend past its budget.

Tokens are counted on the relayed text, the way the gateway estimates usage it is not told: four
characters a token (estimates.CHARS_PER_TOKEN), and at least one token for each chunk that carries
text (upstreams stream one token or more a chunk). Text is chat `delta.content`,
`delta.reasoning_content`/`reasoning`, tool-call arguments, or a completion's `text`. The chunk
that would cross the limit is cut to fit, then the stream ends like a model that reached
`max_tokens`: a chunk with `finish_reason: "length"` and a usage chunk with the prompt estimate
and the completion tokens relayed (what the call is charged)."""

from __future__ import annotations

import orjson

from backends.base import Chunk, Usage

from .estimates import CHARS_PER_TOKEN

_DELTA_TEXT = ("content", "reasoning_content", "reasoning")


def _texts(choice: dict) -> list[tuple[dict, str]]:
    """The (holder, key) places of a choice that hold generated text."""
    places: list[tuple[dict, str]] = []
    if isinstance(choice.get("text"), str):
        places.append((choice, "text"))
    delta = choice.get("delta")
    if isinstance(delta, dict):
        places += [(delta, k) for k in _DELTA_TEXT if isinstance(delta.get(k), str)]
        for call in delta.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                places.append((function, "arguments"))
    return places


class Cutoff:
    """Counts a stream's completion tokens against `limit`; `see` says when and how it must end."""

    __slots__ = ("limit", "prompt", "chunks", "chars")

    def __init__(self, limit: int, prompt: int):
        self.limit = limit
        self.prompt = prompt
        self.chunks = 0
        self.chars = 0

    @property
    def used(self) -> int:
        return max(self.chunks, -(-self.chars // CHARS_PER_TOKEN))

    def see(self, chunk: Chunk) -> list[Chunk] | None:
        """None while `chunk` fits (relay it as it is); else what to send instead of it, after
        which the stream ends (the upstream is closed)."""
        if chunk.usage is not None:
            return None
        try:
            data = orjson.loads(chunk.data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        places = [p for c in data.get("choices") or () if isinstance(c, dict) for p in _texts(c)]
        chars = sum(len(holder[key]) for holder, key in places)
        if not chars:
            return None
        if max(self.chunks + 1, -(-(self.chars + chars) // CHARS_PER_TOKEN)) <= self.limit:
            self.chunks += 1
            self.chars += chars
            return None
        return self._end(data, places)

    def _end(self, data: dict, places: list[tuple[dict, str]]) -> list[Chunk]:
        out: list[Chunk] = []
        room = self.limit * CHARS_PER_TOKEN - self.chars if self.chunks < self.limit else 0
        if room > 0:  # what fits of the crossing chunk
            for holder, key in places:
                kept = holder[key][:room]
                holder[key] = kept
                room -= len(kept)
                self.chars += len(kept)
            self.chunks += 1
            out.append(Chunk(orjson.dumps(data)))
        head = {k: data[k] for k in ("id", "object", "created", "model") if k in data}
        completion = data.get("object") == "text_completion"
        finish = {"index": 0, "text": "", "finish_reason": "length"} if completion else \
            {"index": 0, "delta": {}, "finish_reason": "length"}
        out.append(Chunk(orjson.dumps({**head, "choices": [finish]})))
        usage = Usage(self.prompt, self.used)
        out.append(Chunk(orjson.dumps({**head, "choices": [], "usage": {
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}}), usage, usage_only=True))
        return out
