"""OpenAI request shapes. Validation rejects only what is wrong (types, ranges, missing fields);
the gateway forwards the client's own dict, so fields these models do not name pass through as sent."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, WithJsonSchema
from pydantic_core import PydanticCustomError

MAX_TOKENS = 2**31 - 1  # what any model server takes (a C int); also keeps limit arithmetic exact
Probability = Annotated[float, Field(ge=0, le=1)]
TokenCount = Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
MAX_STOP = 16


def _stop(value: Any) -> Any:
    """One error on `stop` itself that says the rule (a union's per-member errors named `stop.str`)."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise PydanticCustomError("stop_type", "must be a string or a list of strings")
    if len(value) > MAX_STOP:
        raise PydanticCustomError("stop_too_long", "at most {max} stop sequences are allowed, got {got}",
                                  {"max": MAX_STOP, "got": len(value)})
    return value


Stop = Annotated[Any, AfterValidator(_stop)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: StrictBool | None = None


def _content(value: Any) -> Any:
    """A message's content: a string, or a list of parts, each an object with a string `type`; a
    text part's `text` is a string (other kinds, image_url, input_audio, file, ..., pass as sent).
    One error on `content` that says the rule, checked without building a model per part."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise PydanticCustomError("content_type", "must be a string or a list of content parts")
    for i, part in enumerate(value):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise PydanticCustomError("content_part", "part {i} must be an object with a string 'type'", {"i": i})
        if (part["type"] == "text" or "text" in part) and not isinstance(part.get("text"), str):
            raise PydanticCustomError("content_part", "part {i}: 'text' must be a string", {"i": i})
    return value


Content = Annotated[Any, AfterValidator(_content), WithJsonSchema({"anyOf": [
    {"type": "string"}, {"type": "null"},
    {"type": "array", "items": {"type": "object", "required": ["type"],
                                "properties": {"type": {"type": "string"}, "text": {"type": "string"}}}}]})]


class Message(_Open):
    role: Literal["system", "user", "assistant", "tool", "function", "developer"]
    content: Content = None
    name: StrictStr | None = None


class _Sampling(_Open):
    model: StrictStr = Field(min_length=1)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Probability | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] | None = None
    max_tokens: TokenCount | None = None
    stop: Stop = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: StrictInt | None = None
    user: StrictStr | None = None
    logit_bias: dict[str, float] | None = None
    # Common extras of open-model servers (vLLM, llama.cpp).
    top_k: StrictInt | None = Field(default=None, ge=-1)
    min_p: Probability | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: TokenCount | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None
    echo: StrictBool | None = None
    suffix: StrictStr | None = None
    best_of: Annotated[StrictInt, Field(ge=1)] | None = None


class ImageRequest(_Open):
    model: StrictStr = Field(min_length=1, description="a model name served here (routing needs one)")
    prompt: StrictStr = Field(min_length=1)
    n: Annotated[StrictInt, Field(ge=1, le=10)] | None = None
    size: StrictStr | None = None
    quality: StrictStr | None = None
    style: StrictStr | None = None
    response_format: Literal["url", "b64_json"] | None = None
    user: StrictStr | None = None


class ModerationRequest(_Open):
    model: StrictStr = Field(min_length=1, description="a model name served here (routing needs one)")
    input: StrictStr | Annotated[list[Any], Field(min_length=1)]


class EmbeddingRequest(_Open):
    model: StrictStr = Field(min_length=1)
    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1)] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[StrictInt, Field(ge=1)] | None = None
    user: StrictStr | None = None
