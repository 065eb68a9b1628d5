"""OpenAI Responses API request shape (`POST /v1/responses`). It rejects only what is wrong; the
fields Codex CLI sends that a chat backend has no use for (reasoning, include, prompt_cache_key,
...) are accepted."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ResponsesRequest(_Open):
    model: StrictStr = Field(min_length=1)
    input: StrictStr | list[dict[str, Any]]
    instructions: StrictStr | None = None
    max_output_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    stream: StrictBool | None = None
    store: StrictBool | None = None
    previous_response_id: StrictStr | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    include: list[StrictStr] | None = None
    metadata: dict[str, Any] | None = None
    user: StrictStr | None = None
