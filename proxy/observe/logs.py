"""Request logs: one JSON line per request, made from its usage record as the core submits it, on
the `keystile.requests` logger (`keystile serve` prints its messages as they are, on stdout).

A line says who called (the key's display form `sk-...abcd`, alias, user, team; never the key or its
hash), what was asked (route, model) and how it went (deployment, status, error type, latency, time
to first token, tokens, cost). The prompt only with `log_prompts`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson

from ..domain import UsageRecord

if TYPE_CHECKING:
    from ..core.gateway import Call

LOGGER = "keystile.requests"
PROMPT_FIELDS = ("system", "messages", "prompt", "suffix", "input", "query", "documents")
"""What a request body holds of its prompt, in every dialect's translation (chat, completions, FIM,
embeddings, rerank, Anthropic messages)."""


class RequestLog:
    def __init__(self, *, log_prompts: bool = False):
        self._log = logging.getLogger(LOGGER)
        self.log_prompts = log_prompts

    def __call__(self, rec: UsageRecord, call: Call) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return
        p = call.principal
        line = {
            "time": rec.created_at.isoformat(), "request_id": rec.request_id,
            "key": p.key_name or ("master" if p.is_master else None), "key_alias": p.key_alias,
            "user_id": rec.user_id, "team_id": rec.team_id, "route": rec.route, "model": rec.model,
            "deployment": rec.deployment, "status": rec.status, "error_type": rec.error_type,
            "latency_ms": round(rec.latency_ms, 2),
            "ttft_ms": round(rec.ttft_ms, 2) if rec.ttft_ms is not None else None, "streamed": rec.streamed,
            "prompt_tokens": rec.prompt_tokens, "completion_tokens": rec.completion_tokens, "cost": rec.cost,
        }
        if self.log_prompts and call.body is not None:
            line["prompt"] = {k: call.body[k] for k in PROMPT_FIELDS if k in call.body}
        self._log.info(orjson.dumps(line, default=str).decode())
