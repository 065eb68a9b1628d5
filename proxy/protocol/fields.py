"""Field types the admin API's bodies, queries and answers share. Each bounds what the database
columns can hold (text lengths, no NUL, 32-bit integers, datetimes that stay in range), so bad input
is a 400 naming the field before anything is written, never a database error after."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from ..durations import parse_duration

NO_NUL = r"^[^\x00]*$"
INT32_MAX = 2**31 - 1  # INTEGER columns on Postgres
MAX_PAGE = 1_000_000
METADATA_MAX_DEPTH = 16
METADATA_MAX_BYTES = 64 * 1024
LIST_MAX = 1000


def text(max_length: int, min_length: int = 0, description: str | None = None) -> Any:
    """A string a text column of `max_length` characters takes: no NUL character (Postgres refuses it)."""
    return Field(min_length=min_length, max_length=max_length, pattern=NO_NUL, description=description)


Id = Annotated[str, text(64, 1)]
Name = Annotated[str, text(255, 1)]
KeyRef = Annotated[str, text(255, 1, "a virtual key or its hash (`token`)")]
ModelName = Annotated[str, text(255, 1)]
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
Money = Annotated[float, Field(ge=0, le=1e15, allow_inf_nan=False)]
Models = Annotated[list[ModelName], Field(max_length=LIST_MAX)]


def _duration(value: str) -> str:
    parse_duration(value)  # ValueError names the bad input
    return value


Duration = Annotated[str, Field(max_length=16, description="e.g. '30s', '10m', '1h', '7d', '30d' (at most 100 years)"),
                     AfterValidator(_duration)]


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (so any input depth is safe)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def bounded(value: dict[str, Any]) -> dict[str, Any]:
    if _depth(value) > METADATA_MAX_DEPTH:
        raise ValueError(f"nested deeper than {METADATA_MAX_DEPTH} levels")
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        raise ValueError(f"cannot be stored: {exc}") from exc
    if len(encoded) > METADATA_MAX_BYTES:
        raise ValueError(f"is {len(encoded)} bytes as JSON; at most {METADATA_MAX_BYTES}")
    if b"\\u0000" in encoded:
        raise ValueError("contains a NUL character")
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(bounded), Field(
    description=f"free-form JSON object (at most {METADATA_MAX_DEPTH} levels deep, {METADATA_MAX_BYTES} bytes)")]


def _in_range(value: datetime) -> datetime:
    """Aware UTC (naive values are UTC); an offset that pushes it out of datetime's range is refused."""
    try:
        return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    except OverflowError as exc:
        raise ValueError("date is out of range once converted to UTC") from exc


Instant = Annotated[datetime, AfterValidator(_in_range)]


def _utc_iso(value: datetime) -> str:
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()


Timestamp = Annotated[datetime, PlainSerializer(_utc_iso, return_type=str),
                      WithJsonSchema({"type": "string", "format": "date-time"})]
"""A time in an answer: ISO 8601 with its offset (`+00:00`)."""


class Strict(BaseModel):
    """A request body: unknown fields are refused (400 naming them), numbers are finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(Answer):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(Answer):
    """Every error answer."""

    error: ErrorDetail
