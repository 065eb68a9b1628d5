"""The Alembic migrations on SQLite and on the machine's PostgreSQL: upgrade to head gives exactly
the schema of proxy/db/models.py, downgrade to base and back works, and the reporting indexes exist."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from proxy.db.migrate import alembic_config, upgrade
from proxy.db.models import Base

from .conftest import _service_up

PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/m.db"
        return
    if not _service_up(5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = f"keystile_mig_{uuid.uuid4().hex[:10]}"
    subprocess.run(PSQL + [f"CREATE DATABASE {name}"], check=True, capture_output=True)
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    subprocess.run(PSQL + [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True)


def _inspect(url: str, look):
    async def run():
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(look)
        finally:
            await engine.dispose()
    return asyncio.run(run())


def test_head_matches_the_models_and_round_trips(url):
    upgrade(url)
    diff = _inspect(url, lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
    assert diff == [], diff
    indexes = {ix["name"]: ix["column_names"] for ix in _inspect(url, lambda c: inspect(c).get_indexes("spend_logs"))}
    assert indexes["ix_spend_logs_model_time"] == ["model", "created_at"]
    assert indexes["ix_spend_logs_key_time"] == ["key_hash", "created_at"]
    if url.startswith("postgresql"):
        stats = _inspect(url, lambda c: c.execute(text("SELECT stxname FROM pg_statistic_ext")).scalars().all())
        assert "spend_logs_utc_day" in stats
    command.downgrade(alembic_config(url), "base")
    assert _inspect(url, lambda c: inspect(c).get_table_names()) in ([], ["alembic_version"])
    upgrade(url)
    assert "ix_spend_logs_model_time" in {ix["name"] for ix in
                                         _inspect(url, lambda c: inspect(c).get_indexes("spend_logs"))}


def test_teams_keep_their_change_triggers_after_the_alias_constraint_goes(url):
    """0004 copies teams without the unique alias on SQLite (batch mode drops triggers): the auth
    change feed's triggers come back, and two teams may share an alias."""
    upgrade(url)
    if url.startswith("postgresql"):
        sql = "SELECT tgname FROM pg_trigger WHERE tgrelid = 'teams'::regclass AND NOT tgisinternal"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'teams'"
    triggers = _inspect(url, lambda c: c.execute(text(sql)).scalars().all())
    assert triggers and all(t.startswith("teams_auth_") for t in triggers)

    def two_teams(c):
        for team in ("a", "b"):
            c.execute(text("INSERT INTO teams (team_id, team_alias, models, spend, metadata, blocked, created_at, "
                           "updated_at) VALUES (:t, 'same', '[]', 0, '{}', false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                      {"t": team})
        return c.execute(text("SELECT count(*) FROM auth_changes WHERE kind = 'team'")).scalar_one()
    assert _inspect(url, two_teams) == 2


def test_memberships_and_organizations_feed_the_change_table_but_spend_does_not(url):
    """0009: a membership change is a change of its team, an organization's is kind 'org'; the
    usage writer's spend accrual on either fires nothing (or every batch would empty the caches)."""
    upgrade(url)

    def changes(c):
        c.execute(text("INSERT INTO organizations (organization_id, models, spend, metadata, blocked, created_at, "
                       "updated_at) VALUES ('o', '[]', 0, '{}', false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        c.execute(text("INSERT INTO teams (team_id, organization_id, models, spend, metadata, blocked, created_at, "
                       "updated_at) VALUES ('t', 'o', '[]', 0, '{}', false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        c.execute(text("INSERT INTO users (user_id, user_role, models, spend, metadata, blocked, created_at, "
                       "updated_at) VALUES ('u', 'internal_user', '[]', 0, '{}', false, CURRENT_TIMESTAMP, "
                       "CURRENT_TIMESTAMP)"))
        c.execute(text("INSERT INTO team_members (team_id, user_id, role, spend, created_at) "
                       "VALUES ('t', 'u', 'user', 0, CURRENT_TIMESTAMP)"))
        before = c.execute(text("SELECT count(*) FROM auth_changes")).scalar_one()
        c.execute(text("UPDATE team_members SET spend = spend + 1"))
        c.execute(text("UPDATE organizations SET spend = spend + 1"))
        assert c.execute(text("SELECT count(*) FROM auth_changes")).scalar_one() == before
        c.execute(text("UPDATE team_members SET max_budget_in_team = 2"))
        c.execute(text("UPDATE organizations SET max_budget = 3"))
        c.execute(text("UPDATE teams SET organization_id = NULL"))
        return c.execute(text("SELECT kind, op, ident FROM auth_changes ORDER BY id")).all()[-3:]
    assert [tuple(r) for r in _inspect(url, changes)] == [("team", "update", "t"), ("org", "update", "o"),
                                                          ("team", "update", "t")]
