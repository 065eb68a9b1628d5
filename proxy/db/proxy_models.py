"""Queries on models added through the API (proxy_models) and their change counter."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models import ModelRevision, ProxyModel


async def revision(session: AsyncSession) -> int:
    return (await session.scalar(select(ModelRevision.revision).where(ModelRevision.id == 1))) or 0


async def all_models(session: AsyncSession) -> list[ProxyModel]:
    return list((await session.scalars(select(ProxyModel).order_by(ProxyModel.created_at, ProxyModel.model_id))).all())


async def bump(session: AsyncSession) -> None:
    """In the transaction that changes proxy_models: every process's poll sees a new revision."""
    await session.execute(update(ModelRevision).where(ModelRevision.id == 1)
                          .values(revision=ModelRevision.revision + 1))
