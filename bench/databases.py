"""The stores a Keystile of bench/relay_bench.py runs on: its database (SQLite in the temp dir, or
a fresh Postgres database made with psql), bulk-seeded keys, and the pids of the Redis server and
Postgres backends whose CPU counts as that Keystile's work."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import sqlite3
import subprocess
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from load import cpu_seconds_or_0


@dataclass
class Database:
    """The database one Keystile runs on: SQLite in its temp dir, or a fresh Postgres database
    (created with psql for the run and dropped after)."""

    url: str  # DATABASE_URL as Keystile takes it
    kind: str  # "sqlite" | "postgres"
    sqlite_path: Path | None = None
    pg: dict | None = None  # psql connection settings and the database name

    def drop(self) -> None:
        if self.pg:
            psql(self.pg, f'DROP DATABASE IF EXISTS "{self.pg["dbname"]}" WITH (FORCE)', check=False)


def pg_server(url: str) -> dict:
    """psql settings from --database-url (postgresql://user[:password]@host[:port][/maintenance-db])."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise SystemExit(f"--database-url must be a Postgres URL (postgresql://user@host:port), not {url!r}")
    return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 5432,
            "user": urllib.parse.unquote(parts.username or "postgres"),
            "password": urllib.parse.unquote(parts.password) if parts.password else None,
            "maintenance_db": parts.path.lstrip("/") or "postgres"}


def psql(pg: dict, sql: str, *, db: str | None = None, stdin: str | None = None, check: bool = True) -> str:
    if not shutil.which("psql"):
        raise RuntimeError("psql is not installed (apt-get install -y postgresql-client)")
    env = {**os.environ, **({"PGPASSWORD": pg["password"]} if pg.get("password") else {})}
    argv = ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", pg["host"], "-p", str(pg["port"]),
            "-U", pg["user"], "-d", db or pg["maintenance_db"], "-c", sql]
    out = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"psql {sql[:80]!r} failed:\n{out.stderr}")
    return out.stdout.strip()


def make_database(server_url: str | None, name: str, workdir: Path) -> Database:
    if not server_url:
        path = workdir / "keystile.db"
        return Database(f"sqlite+aiosqlite:///{path}", "sqlite", sqlite_path=path)
    pg = pg_server(server_url)
    pg["dbname"] = f"keystile_bench_{os.getpid()}_{name}".replace("-", "_").lower()
    psql(pg, f'DROP DATABASE IF EXISTS "{pg["dbname"]}" WITH (FORCE)')
    psql(pg, f'CREATE DATABASE "{pg["dbname"]}"')
    auth = urllib.parse.quote(pg["user"]) + (":" + urllib.parse.quote(pg["password"]) if pg["password"] else "")
    return Database(f"postgresql+asyncpg://{auth}@{pg['host']}:{pg['port']}/{pg['dbname']}", "postgres", pg=pg)


SEED_COLUMNS = ("id", "token_hash", "key_prefix", "key_type", "models", "aliases", "model_rpm_limit",
                "model_tpm_limit", "metadata", "spend", "blocked", "created_at", "updated_at")


def seed_keys(db: Database, n: int, keep: list[str] | None = None) -> dict:
    """Insert n virtual keys straight into the `keys` table (after `keystile db upgrade`), in one bulk
    statement: the rows /key/generate would write (proxy/db/models.py Key, proxy/auth/secrets.py),
    with secrets nobody keeps unless `keep` is given (they are appended to it).
    SQLite: executemany in one transaction; Postgres: COPY through psql."""
    t0 = time.monotonic()
    now = datetime.now(UTC)
    rows = []
    for _ in range(n):
        secret = "sk-" + secrets.token_urlsafe(32)
        if keep is not None:
            keep.append(secret)
        rows.append((str(uuid.uuid4()), hashlib.sha256(secret.encode()).hexdigest(), f"sk-...{secret[-4:]}"))
    if db.kind == "sqlite":
        # SQLAlchemy's SQLite types: DateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC, naive), JSON as text, bool 0/1
        stamp = now.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        conn = sqlite3.connect(db.sqlite_path)
        try:
            with conn:
                conn.executemany(
                    f"INSERT INTO keys ({', '.join(SEED_COLUMNS)}) "
                    "VALUES (?, ?, ?, 'default', '[]', '{}', '{}', '{}', '{}', 0.0, 0, ?, ?)",
                    [(*r, stamp, stamp) for r in rows])
            count = conn.execute("SELECT count(*) FROM keys").fetchone()[0]
        finally:
            conn.close()
    else:
        stamp = now.isoformat()
        csv = "".join(f"{i},{h},{p},default,[],{{}},{{}},{{}},{{}},0,false,{stamp},{stamp}\n" for i, h, p in rows)
        psql(db.pg, f"COPY keys ({', '.join(SEED_COLUMNS)}) FROM STDIN WITH (FORMAT csv)", db=db.pg["dbname"],
             stdin=csv)
        psql(db.pg, "ANALYZE keys", db=db.pg["dbname"])
        count = int(psql(db.pg, "SELECT count(*) FROM keys", db=db.pg["dbname"]))
    if count < n:
        raise RuntimeError(f"seeding keys: {count} rows in keys after inserting {n}")
    return {"keys_seeded": n, "keys_in_db": count, "seed_s": round(time.monotonic() - t0, 2)}


def count_rows(db: Database, table: str) -> int:
    """Rows in `table` now (read beside the running Keystile: SQLite in WAL mode, Postgres)."""
    if db.kind == "sqlite":
        conn = sqlite3.connect(f"file:{db.sqlite_path}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            conn.close()
    return int(psql(db.pg, f"SELECT count(*) FROM {table}", db=db.pg["dbname"]))


def redis_server_pids(redis_url: str) -> list[int]:
    """The Redis server's pid, when it runs on this machine (its /proc entry readable)."""
    import redis  # Keystile's own dependency

    client = redis.Redis.from_url(redis_url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return [pid] if os.path.exists(f"/proc/{pid}/stat") and cpu_seconds_or_0(pid) > 0 else []


def pg_backend_pids(db: Database) -> list[int]:
    """The Postgres backends connected to this Keystile's database, when Postgres runs on this machine."""
    if not db.pg:
        return []
    out = psql(db.pg, f"SELECT pid FROM pg_stat_activity WHERE datname = '{db.pg['dbname']}' "
                      "AND pid <> pg_backend_pid()", check=False)
    return [int(p) for p in out.split() if p.isdigit() and os.path.exists(f"/proc/{p}/stat")]

