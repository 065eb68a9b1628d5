"""Do the spend-reporting queries stay fast on a big `spend_logs` table (PostgreSQL)?

Creates a database, makes the schema with `keystile db upgrade`, fills N synthetic rows
server-side (INSERT … SELECT FROM generate_series, secondary indexes built after the fill, then
VACUUM ANALYZE), and times the gateway's own query functions in proxy/db/spend.py (`spend_logs`,
`global_spend`, `usage_report`, as GET /spend/logs, /global/spend, /spend/report and
`keystile usage` call them) through proxy.db.engine.Database's sessions, the way the routes do.
Each query runs --repeats times; the table shows the median (and first / min / max) in ms,
rows returned, and for every query slower than --slow-ms an EXPLAIN (ANALYZE, BUFFERS) of the
exact SQL SQLAlchemy sent. The database is dropped at the end unless --keep.

    .venv/bin/python bench/spend_queries.py                      # 10M rows, ~4 min on 2 cores
    .venv/bin/python bench/spend_queries.py --rows 1000000       # quicker
    .venv/bin/python bench/spend_queries.py --keep               # keep keystile_spend10m afterwards …
    .venv/bin/python bench/spend_queries.py \\
        --database-url postgresql://postgres@127.0.0.1:5432/keystile_spend10m   # … and re-time it, no refill

--server is the Postgres server to create --db-name on (default postgresql://postgres@127.0.0.1:5432).
--database-url uses an existing database instead: it is upgraded, filled only if spend_logs is
empty, and never dropped.

Data (deterministic, setseed): 10,000 keys (key n belongs to user n % 2000, who is in team n % 200),
key popularity skewed (n = floor(10000 * random()^2): key 0 has ~1% of all rows, key 5000 ~0.007%),
2% of rows without a key (master key), 20 models (model 0 ~22%, model 19 ~2.5%), ~5% errors
(status 400/429/500/503, cost 0), 90 days up to now in insertion order (as an append-only log is).
Query windows are relative to the newest row, so a kept database can be re-timed later.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.db import spend  # noqa: E402
from proxy.db.engine import Database  # noqa: E402

KEYS, USERS, TEAMS, DAYS = 10_000, 2_000, 200, 90
MODELS = [  # name, USD per 1M prompt tokens, per 1M completion tokens
    ("gpt-4o-mini", 0.15, 0.6), ("gpt-4o", 2.5, 10), ("claude-3-5-haiku", 0.8, 4), ("claude-sonnet-4", 3, 15),
    ("gemini-2.0-flash", 0.1, 0.4), ("llama-3.1-8b", 0.05, 0.08), ("gpt-4.1", 2, 8), ("gpt-4.1-mini", 0.4, 1.6),
    ("mistral-small", 0.1, 0.3), ("claude-opus-4", 15, 75), ("gemini-2.5-pro", 1.25, 10), ("o3-mini", 1.1, 4.4),
    ("llama-3.3-70b", 0.6, 0.6), ("qwen-2.5-72b", 0.4, 1.2), ("deepseek-v3", 0.27, 1.1), ("o1", 15, 60),
    ("command-r-plus", 2.5, 10), ("mistral-large", 2, 6), ("text-embedding-3-small", 0.02, 0),
    ("text-embedding-3-large", 0.13, 0),
]

FILL_SQL = """
INSERT INTO spend_logs (request_id, created_at, key_hash, user_id, team_id, model, deployment, route,
                        prompt_tokens, completion_tokens, cost, latency_ms, ttft_ms, status, error_type, streamed)
SELECT 'req-' || lpad(s.g::text, 12, '0'),
       CAST(:t0 AS timestamptz) + (s.g - s.jitter) * CAST(:step AS interval),
       k.key_hash, k.user_id, k.team_id,
       m.name, m.name || '-' || (s.g % 3), m.route,
       s.pt, CASE WHEN s.err < 0.05 OR m.out_price = 0 THEN 0 ELSE s.ct END,
       CASE WHEN s.err < 0.05 THEN 0
            ELSE (s.pt * m.in_price + CASE WHEN m.out_price = 0 THEN 0 ELSE s.ct * m.out_price END) / 1e6 END,
       200 + s.lat * 4000,
       CASE WHEN s.st < 0.4 AND m.out_price > 0 THEN 50 + s.lat * 400 END,
       CASE WHEN s.err < 0.05 THEN (ARRAY[400, 429, 500, 503])[1 + floor(s.err * 80)::int] ELSE 200 END,
       CASE WHEN s.err < 0.05 THEN (ARRAY['bad_request', 'rate_limited', 'upstream_error',
                                          'upstream_unavailable'])[1 + floor(s.err * 80)::int] END,
       s.st < 0.4 AND m.out_price > 0
FROM (SELECT g, random() AS jitter,
             CASE WHEN random() < 0.02 THEN NULL ELSE floor(:keys * power(random(), 2))::int END AS kn,
             floor(:models * power(random(), 2))::int AS mn,
             random() AS err, random() AS st, random() AS lat,
             (20 + random() * 4000)::int AS pt, (10 + random() * 1000)::int AS ct
      FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g
      OFFSET 0) AS s
LEFT JOIN bench_keys k ON k.n = s.kn
JOIN bench_models m ON m.n = s.mn
"""


def key_hash(n: int) -> str:
    return hashlib.sha256(f"bench-key-{n}".encode()).hexdigest()


def asyncpg_url(url: str, database: str | None = None) -> str:
    u = make_url(url).set(drivername="postgresql+asyncpg")
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


# --- setup ----------------------------------------------------------------------------------------

async def admin(server: str, sql: str) -> None:
    engine = create_async_engine(asyncpg_url(server, "postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def upgrade(url: str) -> None:
    keystile = Path(sys.executable).parent / "keystile"
    argv = [str(keystile), "db", "upgrade"] if keystile.exists() else [sys.executable, "-m", "proxy.cli", "db", "upgrade"]
    subprocess.run(argv, env={**os.environ, "DATABASE_URL": url}, cwd=ROOT, check=True)


async def fill(db: Database, rows: int, chunk: int) -> dict[str, float]:
    """Fill spend_logs with `rows` rows; returns seconds per phase."""
    times: dict[str, float] = {}
    async with db.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        ex = conn.exec_driver_sql
        await ex("SET maintenance_work_mem = '512MB'")
        await ex("SET synchronous_commit = off")
        # Secondary indexes and the primary key are built once after the fill (a sort each), not
        # maintained row by row; they are recreated from their own definitions, as the migration made them.
        indexes = (await ex("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'spend_logs' AND "
                            "indexname NOT IN (SELECT conname FROM pg_constraint)")).all()
        constraints = (await ex("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                                "WHERE conrelid = 'spend_logs'::regclass AND contype = 'p'")).all()
        for name, _ in indexes:
            await ex(f'DROP INDEX "{name}"')
        for name, _ in constraints:
            await ex(f'ALTER TABLE spend_logs DROP CONSTRAINT "{name}"')

        await ex("CREATE TEMP TABLE bench_keys (n int PRIMARY KEY, key_hash text, user_id text, team_id text)")
        await ex(f"INSERT INTO bench_keys SELECT n, encode(sha256(('bench-key-' || n)::bytea), 'hex'), "
                 f"'user-' || (n % {USERS}), 'team-' || (n % {TEAMS}) FROM generate_series(0, {KEYS - 1}) n")
        await ex("CREATE TEMP TABLE bench_models (n int PRIMARY KEY, name text, route text, "
                 "in_price float8, out_price float8)")
        await conn.execute(text("INSERT INTO bench_models VALUES (:n, :name, :route, :i, :o)"),
                           [{"n": n, "name": name, "i": i, "o": o,
                             "route": "/v1/embeddings" if o == 0 else "/v1/chat/completions"}
                            for n, (name, i, o) in enumerate(MODELS)])
        await ex("ANALYZE bench_keys")
        await ex("ANALYZE bench_models")
        await ex("SELECT setseed(0.42)")

        t0 = (await ex("SELECT now() - interval '%d days'" % DAYS)).scalar_one()
        step = timedelta(days=DAYS) / rows
        start = time.perf_counter()
        for lo in range(1, rows + 1, chunk):
            hi = min(rows, lo + chunk - 1)
            await conn.execute(text(FILL_SQL), {"t0": t0, "step": step, "lo": lo, "hi": hi,
                                                "keys": KEYS, "models": len(MODELS)})
            print(f"  filled {hi:>11,} rows  {time.perf_counter() - start:6.1f} s", flush=True)
        times["insert"] = time.perf_counter() - start

        start = time.perf_counter()
        for name, definition in constraints:
            await ex(f'ALTER TABLE spend_logs ADD CONSTRAINT "{name}" {definition}')
        for _, definition in indexes:
            await ex(definition)
        times["indexes"] = time.perf_counter() - start
        print(f"  indexes {times['indexes']:6.1f} s", flush=True)

        start = time.perf_counter()
        # VACUUM too, not only ANALYZE: sets hint bits and the visibility map now, as autovacuum would
        # for a table that has been around, and keeps autovacuum from starting during the timings.
        await ex("VACUUM (ANALYZE) spend_logs")
        times["vacuum_analyze"] = time.perf_counter() - start
        await ex("DROP TABLE bench_keys, bench_models")
        await ex("RESET ALL")
    return times


# --- the queries ----------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    call: Callable[[Any], Awaitable[Any]]
    runs_ms: list[float] = field(default_factory=list)
    rows: int = 0
    sql: tuple[str, Any] | None = None  # the last statement it sent, for EXPLAIN


def cases(now: datetime) -> list[Case]:
    d7, d30 = now - timedelta(days=7), now - timedelta(days=30)
    busy_key, mid_key = key_hash(0), key_hash(KEYS // 2)
    rare_model, top_model = MODELS[-1][0], MODELS[0][0]

    def logs(**kw: Any) -> Callable[[Any], Awaitable[Any]]:
        return lambda s: spend.spend_logs(s, **kw)

    def report(**kw: Any) -> Callable[[Any], Awaitable[Any]]:
        return lambda s: spend.usage_report(s, **kw)

    return [
        Case("logs: busiest key, 7d, page 1", logs(key_hash=busy_key, start=d7)),
        Case("logs: busiest key, 7d, page 20", logs(key_hash=busy_key, start=d7, offset=1900)),
        Case("logs: typical key, 7d, page 1", logs(key_hash=mid_key, start=d7)),
        Case("logs: busiest team, page 1", logs(team_id="team-0")),
        Case("logs: typical team, 7d, page 1", logs(team_id=f"team-{TEAMS // 2}", start=d7)),
        Case("logs: busiest user, page 1", logs(user_id="user-0")),
        Case("logs: typical user, page 1", logs(user_id=f"user-{USERS // 2}")),
        Case("logs: all, page 1", logs()),
        Case(f"logs: model {top_model}, page 1", logs(model=top_model)),
        Case(f"logs: model {rare_model}, page 1", logs(model=rare_model)),
        Case(f"logs: model {rare_model}, 7d..1d ago", logs(model=rare_model, start=d7, end=now - timedelta(days=1))),
        Case("logs: model with no rows, page 1", logs(model="no-such-model")),
        Case(f"logs: typical key + model {rare_model}", logs(key_hash=mid_key, model=rare_model)),
        Case("global spend: 7d", lambda s: spend.global_spend(s, start=d7)),
        Case("global spend: 30d", lambda s: spend.global_spend(s, start=d30)),
        Case("global spend: all (90d)", lambda s: spend.global_spend(s)),
        Case("report by day: busiest team, 7d", report(team_id="team-0", since=d7, by="day")),
        Case("report by model: busiest team, 7d", report(team_id="team-0", since=d7, by="model")),
        Case("report by key: busiest team, 7d", report(team_id="team-0", since=d7, by="key")),
        Case("report by day: busiest key, 30d", report(key_hash=busy_key, since=d30, by="day")),
        Case("report by day: all, 7d", report(since=d7, by="day")),
        Case("report by model: all, 7d", report(since=d7, by="model")),
        Case("report by key: all, 7d", report(since=d7, by="key")),
    ]


async def time_cases(db: Database, todo: list[Case], repeats: int) -> None:
    sent: list[tuple[str, Any]] = []

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def _capture(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        sent.append((statement, parameters))

    for case in todo:
        for _ in range(repeats):
            sent.clear()
            start = time.perf_counter()
            async with db.sessions() as session:
                result = await case.call(session)
            case.runs_ms.append((time.perf_counter() - start) * 1000)
        case.rows = len(result) if isinstance(result, list) else 1
        case.sql = sent[-1]
        print(f"  {case.name:<50} {statistics.median(case.runs_ms):9.1f} ms", flush=True)
    event.remove(db.engine.sync_engine, "before_cursor_execute", _capture)


async def explain(db: Database, case: Case) -> str:
    statement, params = case.sql  # type: ignore[misc]
    async with db.engine.connect() as conn:
        res = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, tuple(params or ()))
        return "\n".join(r[0] for r in res)


def table(todo: list[Case]) -> str:
    lines = [f"| {'query':<50} | median ms | first ms | min ms | max ms |  rows |",
             f"|{'-' * 52}|----------:|---------:|-------:|-------:|------:|"]
    for c in todo:
        lines.append(f"| {c.name:<50} | {statistics.median(c.runs_ms):9.1f} | {c.runs_ms[0]:8.1f} | "
                     f"{min(c.runs_ms):6.1f} | {max(c.runs_ms):6.1f} | {c.rows:5} |")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------

async def run(args: argparse.Namespace, url: str) -> None:
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            existing = (await conn.execute(text("SELECT count(*) FROM (SELECT 1 FROM spend_logs LIMIT 1) x"))).scalar()
        if existing:
            print("spend_logs already has rows: not filling")
        else:
            print(f"filling {args.rows:,} rows …", flush=True)
            start = time.perf_counter()
            phases = await fill(db, args.rows, args.chunk)
            print(f"fill: {time.perf_counter() - start:.1f} s (" +
                  ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()) + ")", flush=True)
        async with db.engine.connect() as conn:
            info = (await conn.execute(text(
                "SELECT (SELECT reltuples::bigint FROM pg_class WHERE relname = 'spend_logs'), "
                "pg_size_pretty(pg_table_size('spend_logs')), pg_size_pretty(pg_indexes_size('spend_logs')), "
                "(SELECT max(created_at) FROM spend_logs), version()"))).one()
        print(f"spend_logs: ~{info[0]:,} rows, table {info[1]}, indexes {info[2]}; {info[4].split(' on ')[0]}")
        now = info[3]
        todo = cases(now)
        if args.only:
            todo = [c for c in todo if any(s in c.name for s in args.only)]
        print(f"timing {len(todo)} queries x {args.repeats} …", flush=True)
        await time_cases(db, todo, args.repeats)
        print()
        print(table(todo))
        slow = [c for c in todo if args.explain_all or statistics.median(c.runs_ms) > args.slow_ms]
        for c in slow:
            print(f"\n--- EXPLAIN (ANALYZE, BUFFERS): {c.name} (median {statistics.median(c.runs_ms):.1f} ms)")
            print(c.sql[0] if c.sql else "")
            print(await explain(db, c))
    finally:
        await db.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows to fill (default 10,000,000)")
    ap.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432",
                    help="Postgres server to create --db-name on")
    ap.add_argument("--db-name", default="keystile_spend10m")
    ap.add_argument("--database-url", help="use this existing database instead (not created, not dropped)")
    ap.add_argument("--keep", action="store_true", help="do not drop the created database at the end")
    ap.add_argument("--repeats", type=int, default=7, help="runs per query (default 7)")
    ap.add_argument("--slow-ms", type=float, default=200, help="EXPLAIN queries whose median is above this")
    ap.add_argument("--explain-all", action="store_true")
    ap.add_argument("--only", nargs="*", help="only the queries whose name contains one of these")
    ap.add_argument("--chunk", type=int, default=1_000_000, help="rows per INSERT during the fill")
    args = ap.parse_args()

    created = not args.database_url
    if created:
        url = asyncpg_url(args.server, args.db_name)
        asyncio.run(admin(args.server, f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)'))
        asyncio.run(admin(args.server, f'CREATE DATABASE "{args.db_name}"'))
        print(f"created database {args.db_name}")
    else:
        url = asyncpg_url(args.database_url)
    try:
        upgrade(url)
        asyncio.run(run(args, url))
    finally:
        if created and not args.keep:
            asyncio.run(admin(args.server, f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)'))
            print(f"dropped database {args.db_name}")
        elif created:
            print(f"kept database {args.db_name}: re-time with --database-url "
                  f"{make_url(url).set(drivername='postgresql').render_as_string(hide_password=False)}")


if __name__ == "__main__":
    main()
