"""Token estimates made before a call (for TPM reservations and budget holds) and after a stream
that ended without a usage chunk."""

from __future__ import annotations

from collections.abc import Iterable

import orjson

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4


def _text_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def estimate_prompt_tokens(body: dict) -> int:
    """A cheap upper-ish estimate: ~4 characters a token plus per-message overhead."""
    if "messages" in body:
        total = 0
        for m in body["messages"]:
            content = m.get("content")
            if isinstance(content, str):
                total += _text_tokens(content)
            elif isinstance(content, list):
                total += sum(_text_tokens(p.get("text") or "") for p in content if isinstance(p, dict))
            total += MESSAGE_OVERHEAD
        return total
    source = body.get("prompt", body.get("input", ""))
    if isinstance(source, str):
        return _text_tokens(source)
    if isinstance(source, list):
        return sum(_text_tokens(x) if isinstance(x, str) else len(x) if isinstance(x, list) else 1 for x in source)
    return 0


def prompt_text(body: dict) -> str:
    """The text a chat body puts before the model: each message's role and text, tool calls and
    tool definitions (for counting with a real tokenizer)."""
    parts = []
    for m in body.get("messages") or ():
        content = m.get("content")
        parts.append(str(m.get("role") or ""))
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text") or "") for p in content if isinstance(p, dict))
        if m.get("tool_calls"):
            parts.append(orjson.dumps(m["tool_calls"]).decode())
    if body.get("tools"):
        parts.append(orjson.dumps(body["tools"]).decode())
    return "\n".join(parts)


def requested_completion_tokens(body: dict) -> int | None:
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return value if isinstance(value, int) else None


def streamed_text(chunks: Iterable[bytes]) -> str:
    """The generated text of relayed chunks (chat deltas or completion text)."""
    parts = []
    for data in chunks:
        try:
            choices = orjson.loads(data).get("choices") or []
        except (orjson.JSONDecodeError, AttributeError):
            continue
        for choice in choices:
            delta = choice.get("delta") or {}
            parts.append(delta.get("content") or choice.get("text") or "")
    return "".join(parts)
