"""Reading a request body: size limit, JSON parsing and validation against a wire model,
each failure a typed error naming what is wrong."""

from __future__ import annotations

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from .errors import BadRequest, PayloadTooLarge


async def read_json(request: Request, limit: int) -> dict:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
        raw = await request.body()
    else:
        buf = bytearray()
        async for part in request.stream():
            buf += part
            if len(buf) > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        raw = bytes(buf)
    if not raw:
        raise BadRequest("request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def validate(model: type[BaseModel], data: dict) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise BadRequest(f"{param}: {first['msg']}" if param else first["msg"], param=param) from exc
