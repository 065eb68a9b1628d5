"""Reranking (`POST /v1/rerank`, also `/rerank`), for Continue's rerankers and Cohere/Jina-style
clients: `{model, query, documents, top_n}` to a rerank-capable backend (an OpenAI-compatible
server's `/rerank`, litellm's rerank providers). The answer carries the ranking twice, as
`results[]` and `data[]` (Continue's providers read one or the other), each `{index,
relevance_score}` (and `document` when asked), best first, at most `top_n`."""

from __future__ import annotations

import orjson

from ..core import Answer, Inference
from ..errors import UpstreamFailed
from ..protocol.rerank import RerankRequest
from .base import Dialect, Endpoint, validate


def _ranking(data: object) -> list[dict]:
    """The ranked entries of an upstream's answer: Cohere/Jina/vLLM `results`, `data`, or TEI's bare list."""
    entries = data.get("results", data.get("data")) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise UpstreamFailed("the upstream's rerank answer has no results")
    ranked = []
    for entry in entries:
        score = entry.get("relevance_score", entry.get("score")) if isinstance(entry, dict) else None
        if not isinstance(score, (int, float)) or not isinstance(entry.get("index"), int):
            raise UpstreamFailed("the upstream's rerank answer has an entry without index and score")
        ranked.append({"index": entry["index"], "relevance_score": float(score),
                       **({"document": entry["document"]} if entry.get("document") is not None else {})})
    return sorted(ranked, key=lambda e: e["relevance_score"], reverse=True)


class Rerank(Dialect):
    name = "rerank"
    prefixes = ("/v1", "")
    endpoints = (Endpoint("/rerank", "rerank", RerankRequest, "Rerank documents for a query"),)

    def parse(self, endpoint: Endpoint, body: dict) -> Inference:
        validate(RerankRequest, body)
        return Inference(body)

    def render(self, endpoint: Endpoint, request: Inference, answer: Answer) -> bytes:
        data = orjson.loads(answer.body)
        ranked = _ranking(data)
        top_n = request.body.get("top_n")
        if top_n is not None:
            ranked = ranked[:top_n]
        if not request.body.get("return_documents"):
            ranked = [{"index": e["index"], "relevance_score": e["relevance_score"]} for e in ranked]
        usage = data.get("usage") if isinstance(data, dict) else None
        return orjson.dumps({"id": (data.get("id") if isinstance(data, dict) else None) or "rerank",
                             "object": "list", "model": request.body["model"], "results": ranked, "data": ranked,
                             "usage": usage or {"total_tokens": answer.usage.total_tokens if answer.usage else 0}})


DIALECT = Rerank()
