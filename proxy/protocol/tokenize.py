"""Tokenizer request shapes (`POST /v1/tokenize`, `/v1/detokenize`): the issue's and the 004 guide's
`{model?, text}` or `{model?, messages}`, and vLLM's own (`prompt`, `add_special_tokens`), which
vLLM clients send to its `/tokenize`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from .openai import MAX_TOKENS, Message

MAX_TOKEN_IDS = 1_000_000


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = Field(default=None, min_length=1, description="default: the configured default model")
    text: StrictStr | None = None
    prompt: StrictStr | None = Field(default=None, description="vLLM's name for `text`")
    messages: Annotated[list[Message], Field(min_length=1)] | None = Field(
        default=None, description="rendered with the model's chat template, as a chat completion would be")
    tools: list[dict[str, Any]] | None = None
    add_special_tokens: StrictBool | None = Field(default=None, description="text only: add the BOS the model "
                                                                            "adds to a prompt (default true)")

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        given = [name for name in ("text", "prompt", "messages") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("send exactly one of `text` (or `prompt`) and `messages`"
                             + (f", not {' and '.join(given)}" if given else ""))
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = Field(default=None, min_length=1, description="default: the configured default model")
    tokens: Annotated[list[Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)]], Field(max_length=MAX_TOKEN_IDS)]
