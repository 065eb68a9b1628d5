"""Running Alembic from the CLI and refusing to serve on a database behind the code."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    async def read() -> str | None:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
        finally:
            await engine.dispose()

    return asyncio.run(read())


def ensure_current(url: str) -> None:
    """Raise RuntimeError naming the fix when the database is not at the code's head revision."""
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    try:
        current = current_revision(url)
    except Exception as exc:  # driver errors differ per backend; the message is what matters
        raise RuntimeError(f"cannot reach the database ({type(exc).__name__}: {exc})") from exc
    if current != head:
        raise RuntimeError(f"database is at revision {current or 'none'}, the code needs {head}: "
                           "run `keystile db upgrade`")
