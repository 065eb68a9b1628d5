"""Rerank request shape (`POST /v1/rerank`), as Cohere, Jina, vLLM and Continue send it."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(min_length=1)
    query: StrictStr
    documents: Annotated[list[StrictStr | dict[str, Any]], Field(min_length=1)]
    top_n: Annotated[StrictInt, Field(ge=1)] | None = None
    return_documents: StrictBool | None = None
