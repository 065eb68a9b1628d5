"""Anthropic Messages request shapes (`POST /v1/messages`, `/v1/messages/count_tokens`). They reject
only what is wrong; fields they do not name (cache_control, context_management, ...) are accepted."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Block(_Open):
    type: StrictStr


class Message(_Open):
    role: Literal["user", "assistant", "system"]  # system: Claude Code's mid-conversation system messages (beta)
    content: StrictStr | list[Block]


class Tool(_Open):
    name: StrictStr = Field(min_length=1)
    type: StrictStr | None = None  # absent or "custom" for client tools; server tools name a version
    description: StrictStr | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoice(_Open):
    type: Literal["auto", "any", "tool", "none"]
    name: StrictStr | None = None
    disable_parallel_tool_use: StrictBool | None = None


class CountTokensRequest(_Open):
    model: StrictStr = Field(min_length=1)
    messages: Annotated[list[Message], Field(min_length=1)]
    system: StrictStr | list[Block] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: Annotated[StrictInt, Field(ge=1)]
    stream: StrictBool | None = None
    stop_sequences: list[StrictStr] | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[StrictInt, Field(ge=0)] | None = None
    metadata: dict[str, Any] | None = None
