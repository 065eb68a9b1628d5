"""OpenAI request bodies -> the llama-cpp-python keyword arguments the worker passes on (what a
local model can do: one choice, text content only; the rest is a clear NotSupported)."""

from __future__ import annotations

from typing import Any

from . import errors

# OpenAI request fields -> llama-cpp-python keyword arguments (shared by chat and text completions).
_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
    "repetition_penalty": "repeat_penalty",
    "mirostat_mode": "mirostat_mode",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "grammar": "grammar",
}
_CHAT_ONLY = ("tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs")
_COMPLETION_ONLY = ("suffix", "echo", "logprobs")


def _common_params(body: dict, names: tuple[str, ...]) -> dict:
    n = body.get("n")
    if n is not None and n != 1:
        raise errors.NotSupported("llama.cpp models generate one choice per request: n must be 1", code="unsupported")
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise errors.NotSupported("llama.cpp models do not support best_of", code="unsupported")
    params = {target: body[name] for name, target in _SAMPLING.items() if body.get(name) is not None}
    params.update({name: body[name] for name in names if body.get(name) is not None})
    return params


def chat_params(body: dict) -> dict:
    params = _common_params(body, _CHAT_ONLY)
    params["messages"] = [_message(m) for m in body.get("messages") or []]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            params["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
        elif response_format.get("type") == "json_object":
            params["response_format"] = response_format
    return params


def completion_params(body: dict) -> dict:
    params = _common_params(body, _COMPLETION_ONLY)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        if len(prompt) != 1:
            raise errors.NotSupported("llama.cpp models take one prompt per request", code="unsupported")
        prompt = prompt[0]
    params["prompt"] = prompt
    if body.get("max_tokens") is not None:
        params["max_tokens"] = body["max_tokens"]
    return params


def _message(message: Any) -> Any:
    """Flatten OpenAI content parts to the plain string GGUF chat templates expect."""
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if content is None:
        return {**message, "content": ""}
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                texts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                texts.append(part)
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                message_text = f"this llama.cpp model takes text only, not {kind!r} content"
                raise errors.NotSupported(message_text, code="unsupported")
        return {**message, "content": "".join(texts)}
    return message
