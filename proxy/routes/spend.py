"""Spend reporting: LiteLLM's /spend/logs and /global/spend, and /spend/report for `keystile usage`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from ..admin import ERRORS, Admin, AdminRoute, AnyCaller, Page, Size, sessions
from ..auth.secrets import to_hash
from ..db import spend
from ..domain import UsageRecord
from ..durations import parse_duration, utcnow
from ..errors import BadRequest, Forbidden
from ..protocol.answers import DaySpend, GlobalSpend, KeySpend, LiteLLMSpendLog, SpendLogs, SpendReport
from ..protocol.fields import NO_NUL, Duration, Id, Instant, KeyRef, ModelName
from ..services import ServicesDep

router = APIRouter(tags=["spend"], route_class=AdminRoute, responses=ERRORS)
LITELLM_ROWS = 1000  # LiteLLM answers every row; Keystile the newest 1000 (page for more)
CALL_TYPES = (("/chat/completions", "acompletion"), ("/completions", "atext_completion"),
              ("/embeddings", "aembedding"))  # LiteLLM's names for what a route does


def _since(since: str | None) -> datetime | None:
    return None if since is None else utcnow() - timedelta(seconds=parse_duration(since))


@router.get("/spend/logs", summary="Usage records, newest first: LiteLLM's list of rows, or Keystile's pages",
            response_model=list[LiteLLMSpendLog] | SpendLogs)
async def spend_logs(services: ServicesDep, caller: AnyCaller, api_key: KeyRef | None = None,
                     user_id: Id | None = None, team_id: Id | None = None, model: ModelName | None = None,
                     request_id: Annotated[str | None, Query(min_length=1, max_length=255, pattern=NO_NUL,
                                                             description="an answer's id (chatcmpl-…) or an "
                                                                         "x-request-id")] = None,
                     start_date: Instant | None = None, end_date: Instant | None = None,
                     page: Page | None = None, size: Size | None = None) -> list[dict] | dict:
    """Without `page` or `size`: LiteLLM's answer, a list of its rows (the newest LITELLM_ROWS).
    With either: Keystile's `{"data": [...], "page", "size"}` (size 100 by default)."""
    key_hash = to_hash(api_key) if api_key else None
    if not caller.may_administer:
        if key_hash not in (None, caller.key_hash) or user_id or team_id:
            raise Forbidden("a key may only read its own spend logs", code="admin_only")
        key_hash = caller.key_hash
    paged = page is not None or size is not None
    page, size = page or 1, size or (100 if paged else LITELLM_ROWS)
    async with sessions(services) as session:
        rows = await spend.spend_logs(session, key_hash=key_hash, user_id=user_id, team_id=team_id, model=model,
                                      request_id=request_id, start=start_date, end=end_date, limit=size,
                                      offset=(page - 1) * size)
    if not paged:
        return [litellm_row(r) for r in rows]
    return {"data": [r.to_dict() for r in rows], "page": page, "size": size}


def litellm_row(r: UsageRecord) -> dict:
    call_type = next((name for suffix, name in CALL_TYPES if r.route.endswith(suffix)), r.route)
    return {"request_id": r.response_id or r.request_id, "call_type": call_type,
            "api_key": r.key_hash or "", "spend": r.cost, "total_tokens": r.total_tokens,
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "startTime": r.created_at.isoformat(),
            "endTime": (r.created_at + timedelta(milliseconds=r.latency_ms)).isoformat(),
            "model": r.model, "model_id": r.deployment, "user": r.user_id or "", "team_id": r.team_id,
            "metadata": {"status": r.status, "error_type": r.error_type, "streamed": r.streamed,
                         "ttft_ms": r.ttft_ms, "route": r.route, "x_request_id": r.request_id,
                         "cache_read_tokens": r.cache_read_tokens, "cache_creation_tokens": r.cache_creation_tokens}}


@router.get("/global/spend", summary="Total spend, tokens and requests", response_model=GlobalSpend)
async def global_spend(services: ServicesDep, _: Admin, start_date: Instant | None = None,
                       end_date: Instant | None = None) -> dict:
    async with sessions(services) as session:
        totals = await spend.global_spend(session, start=start_date, end=end_date)
    return {**asdict(totals), "total_tokens": totals.total_tokens}


@router.get("/spend/report", summary="Usage grouped by day, model or key", response_model=SpendReport)
async def report(services: ServicesDep, _: Admin, key: KeyRef | None = None, team_id: Id | None = None,
                 since: Duration | None = None, by: Literal["day", "model", "key"] = "day") -> dict:
    async with sessions(services) as session:
        groups = await spend.usage_report(session, key_hash=to_hash(key) if key else None, team_id=team_id,
                                          since=_since(since), by=by)
    return {"by": by, "data": [asdict(g) for g in groups]}


NO_TEAM = "Unassigned Team"  # LiteLLM's name for spend of keys without a team


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), timezone.utc)


@router.get("/global/spend/report", summary="LiteLLM's spend report: by day and team, or by key and model",
            response_model=list[DaySpend] | list[KeySpend])
async def global_spend_report(services: ServicesDep, _: Admin, start_date: date, end_date: date,
                              group_by: Literal["team", "customer", "api_key"] = "team",
                              api_key: KeyRef | None = None, internal_user_id: Id | None = None) -> list[dict]:
    """Days from `start_date` to `end_date`, both included (UTC). group_by=team (LiteLLM's default):
    per day, each team's spend with its (model, key) breakdown. With `api_key`, `internal_user_id`
    (a user's keys) or group_by=api_key: per key, its spend by model."""
    if end_date < start_date:
        raise BadRequest("end_date is before start_date", param="end_date")
    if group_by == "customer":
        raise BadRequest("group_by=customer is not offered: Keystile does not record the end user (the "
                         "request's `user` field); group by team or api_key", param="group_by")
    end = _day_start(end_date) + timedelta(days=1) if end_date < date.max else None
    async with sessions(services) as session:
        cells = await spend.spend_cells(session, start=_day_start(start_date), end=end,  # type: ignore[arg-type]
                                        key_hash=to_hash(api_key) if api_key else None, user_id=internal_user_id)
    if api_key or internal_user_id or group_by == "api_key":
        return _by_key(cells)
    days: dict[str, dict[str, dict]] = defaultdict(dict)
    for c in cells:
        name = (c.team_alias or c.team_id) if c.team_id else NO_TEAM
        team = days[c.day].setdefault(name, {"team_name": name, "total_spend": 0.0, "metadata": []})
        team["total_spend"] += c.cost
        team["metadata"].append({"model": c.model, "spend": c.cost, "api_key": c.key_hash or "",
                                 "total_tokens": c.prompt_tokens + c.completion_tokens})
    return [{"group_by_day": _day_start(date.fromisoformat(day)).isoformat(), "teams": list(teams.values())}
            for day, teams in days.items()]


def _by_key(cells: list[spend.SpendCell]) -> list[dict]:
    keys: dict[str, dict] = {}
    for c in cells:
        key = keys.setdefault(c.key_hash or "", {"api_key": c.key_hash or "", "total_cost": 0.0, "total_input_tokens": 0,
                                                 "total_output_tokens": 0, "model_details": {}})
        model = key["model_details"].setdefault(c.model, {"model": c.model, "total_cost": 0.0,
                                                           "total_input_tokens": 0, "total_output_tokens": 0})
        for row in (key, model):
            row["total_cost"] += c.cost
            row["total_input_tokens"] += c.prompt_tokens
            row["total_output_tokens"] += c.completion_tokens
    for key in keys.values():
        key["model_details"] = list(key["model_details"].values())
    return sorted(keys.values(), key=lambda k: -k["total_cost"])
