"""Spend reporting: LiteLLM's /spend/logs and /global/spend, and /spend/report for `keystile usage`."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Literal

from fastapi import APIRouter

from ..admin import ERRORS, Admin, AdminRoute, AnyCaller, Page, Size, sessions
from ..auth.secrets import to_hash
from ..db import spend
from ..durations import parse_duration, utcnow
from ..errors import Forbidden
from ..protocol.answers import GlobalSpend, SpendLogs, SpendReport
from ..protocol.fields import Duration, Id, Instant, KeyRef, ModelName
from ..services import ServicesDep

router = APIRouter(tags=["spend"], route_class=AdminRoute, responses=ERRORS)


def _since(since: str | None) -> datetime | None:
    return None if since is None else utcnow() - timedelta(seconds=parse_duration(since))


@router.get("/spend/logs", summary="Usage records, newest first (filters and pagination)", response_model=SpendLogs)
async def spend_logs(services: ServicesDep, caller: AnyCaller, api_key: KeyRef | None = None,
                     user_id: Id | None = None, team_id: Id | None = None, model: ModelName | None = None,
                     start_date: Instant | None = None, end_date: Instant | None = None,
                     page: Page = 1, size: Size = 100) -> dict:
    key_hash = to_hash(api_key) if api_key else None
    if not caller.may_administer:
        if key_hash not in (None, caller.key_hash) or user_id or team_id:
            raise Forbidden("a key may only read its own spend logs", code="admin_only")
        key_hash = caller.key_hash
    async with sessions(services) as session:
        rows = await spend.spend_logs(session, key_hash=key_hash, user_id=user_id, team_id=team_id, model=model,
                                      start=start_date, end=end_date, limit=size, offset=(page - 1) * size)
    return {"data": [r.to_dict() for r in rows], "page": page, "size": size}


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
