"""Usage accounting against real databases: a migrated SQLite file, the machine's shared Postgres,
and a Postgres of the test's own that is stopped mid-run (the outage test)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text

from proxy.accounting.journal import Journal
from proxy.accounting.prices import Price, PriceMap
from proxy.accounting.writer import UsageWriter, is_data_error, safe
from proxy.domain import UsageRecord
from proxy.db.engine import Database
from proxy.db.migrate import upgrade
from proxy.accounting.budgets import reset_due_budgets
from proxy.db.models import Key, Organization, SpendLog, Team, TeamMember, User
from proxy.db.spend import global_spend, insert_usage, spend_logs, usage_report

from .upstream import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
T0 = datetime(2031, 5, 17, 12, 0, tzinfo=timezone.utc)


def migrate(url: str) -> None:
    """`upgrade(url)` (which runs its own event loop) in a thread, so it works under a running loop too."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(upgrade, url).result()


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('accounting')}/keystile.db"
    migrate(url)
    return url


@pytest.fixture(scope="session")
def postgres_url(pg_url: str) -> str:
    """This session's own database on the machine's Postgres (not a shared one: a branch with a
    newer migration would leave it at a revision other branches' code does not know)."""
    migrate(pg_url)
    return pg_url


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request) -> AsyncIterator[Database]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    database = Database(url)
    yield database
    await database.aclose()


@dataclass
class Caller:
    """A team, user and key created for one test (unique ids), removed with their spend logs after."""

    tag: str
    key_hash: str
    user_id: str
    team_id: str

    def rec(self, i: int, *, cost: float = 0.001, created_at: datetime | None = None, model: str = "gpt-test",
            **kw) -> UsageRecord:
        return UsageRecord(request_id=f"{self.tag}-{i}", created_at=created_at or datetime.now(timezone.utc),
                           model=model, route="/v1/chat/completions", status=200, key_hash=self.key_hash,
                           user_id=self.user_id, team_id=self.team_id, deployment=f"{model}-0",
                           prompt_tokens=10, completion_tokens=5, cost=cost, latency_ms=12.5, **kw)


async def make_caller(db: Database) -> Caller:
    tag = "acct-" + uuid.uuid4().hex[:12]
    caller = Caller(tag=tag, key_hash=f"{tag}-key", user_id=f"{tag}-user", team_id=f"{tag}-team")
    async with db.sessions() as s, s.begin():
        s.add(Team(team_id=caller.team_id))
        await s.flush()
        s.add(User(user_id=caller.user_id, team_id=caller.team_id))
        await s.flush()
        s.add(Key(id=tag, token_hash=caller.key_hash, key_prefix="sk-test", user_id=caller.user_id,
                  team_id=caller.team_id))
    return caller


async def drop_caller(db: Database, caller: Caller) -> None:
    async with db.sessions() as s, s.begin():
        await s.execute(delete(SpendLog).where(SpendLog.request_id.like(f"{caller.tag}-%")))
        await s.execute(delete(Key).where(Key.id == caller.tag))
        await s.execute(delete(User).where(User.user_id == caller.user_id))
        await s.execute(delete(Team).where(Team.team_id == caller.team_id))


@pytest.fixture
async def caller(db: Database) -> AsyncIterator[Caller]:
    c = await make_caller(db)
    yield c
    await drop_caller(db, c)


async def stored(db: Database, caller: Caller) -> tuple[int, int]:
    """(rows, distinct request ids) of the caller's spend logs."""
    async with db.sessions() as s:
        row = (await s.execute(select(func.count(), func.count(func.distinct(SpendLog.request_id)))
                               .where(SpendLog.request_id.like(f"{caller.tag}-%")))).one()
    return int(row[0]), int(row[1])


async def spends(db: Database, caller: Caller) -> tuple[float, float, float]:
    async with db.sessions() as s:
        key = await s.scalar(select(Key.spend).where(Key.token_hash == caller.key_hash))
        user = await s.scalar(select(User.spend).where(User.user_id == caller.user_id))
        team = await s.scalar(select(Team.spend).where(Team.team_id == caller.team_id))
    return key, user, team


async def test_usage_charges_the_membership_and_the_organization_once(db: Database, caller: Caller):
    """A record of a key with a user and a team adds its cost to the user's membership of the team
    and to the team's organization too, once however often the batch is written; the organization's
    budget window resets like a team's."""
    org = f"{caller.tag}-org"
    async with db.sessions() as s, s.begin():
        s.add(Organization(organization_id=org, budget_duration="1d",
                           budget_reset_at=datetime.now(timezone.utc) - timedelta(hours=1)))
        await s.flush()
        (await s.get(Team, caller.team_id)).organization_id = org
        s.add(TeamMember(team_id=caller.team_id, user_id=caller.user_id, max_budget_in_team=1.0))
    try:
        records = [caller.rec(i, cost=0.25) for i in range(3)]
        for _ in range(2):  # a batch written again (say, after a lost commit acknowledgement)
            async with db.sessions() as s, s.begin():
                await insert_usage(s, records=records)
        async with db.sessions() as s:
            member = await s.get(TeamMember, (caller.team_id, caller.user_id))
            assert member.spend == pytest.approx(0.75)
            assert (await s.get(Organization, org)).spend == pytest.approx(0.75)
            changed = await reset_due_budgets(s, now=datetime.now(timezone.utc))  # only what is due anyway
            assert ("org", org) in changed
            assert (await s.get(Organization, org)).spend == 0
    finally:
        async with db.sessions() as s, s.begin():
            await s.execute(delete(TeamMember).where(TeamMember.team_id == caller.team_id))
            (await s.get(Team, caller.team_id)).organization_id = None
            await s.flush()
            await s.execute(delete(Organization).where(Organization.organization_id == org))


# --- the writer ------------------------------------------------------------------------------


async def test_batches_write_everything_and_keep_spend_current(db: Database, caller: Caller):
    async with db.sessions() as s:
        updated = await s.scalar(select(Key.updated_at).where(Key.token_hash == caller.key_hash))
    async with UsageWriter(db, batch_size=100, flush_interval=0.05) as writer:
        for i in range(1234):
            assert writer.record(caller.rec(i, cost=0.002))
        assert await writer.flush(timeout=20)
        assert writer.pending == 0 and writer.written == 1234 and writer.failures == 0
    assert await stored(db, caller) == (1234, 1234)
    for spend in await spends(db, caller):
        assert spend == pytest.approx(1234 * 0.002)
    async with db.sessions() as s:  # accruing spend is not an edit of the key
        assert await s.scalar(select(Key.updated_at).where(Key.token_hash == caller.key_hash)) == updated


async def test_size_and_time_trigger_a_write_without_flush(db: Database, caller: Caller):
    async with UsageWriter(db, batch_size=20, flush_interval=3600) as writer:
        for i in range(20):
            writer.record(caller.rec(i))
        await wait_until(lambda: writer.written == 20, 5)  # size-triggered: the interval is an hour
    async with UsageWriter(db, batch_size=1000, flush_interval=0.1) as writer:
        for i in range(20, 23):
            writer.record(caller.rec(i))
        await wait_until(lambda: writer.written == 3, 5)  # time-triggered: far below the batch size
    assert await stored(db, caller) == (23, 23)


async def test_a_backlog_is_written_in_larger_batches(db: Database, caller: Caller):
    """More than a batch waiting (a saturated loop, a slow database): the writer catches up in
    batches of catch_up x batch_size, so its backlog, held in memory, does not keep growing."""
    writer = UsageWriter(db, batch_size=100, flush_interval=0.05)  # not started: a backlog builds up
    for i in range(2500):
        writer.record(caller.rec(i))
    writer.start()
    assert await writer.flush(timeout=20)
    assert writer.written == 2500 and writer.batches == 3  # 1,000 + 1,000 + 500; 25 at batch_size alone
    writer.record(caller.rec(2500))
    assert await writer.flush(timeout=5)
    assert writer.batches == 4  # no backlog: an ordinary batch
    await writer.aclose()
    assert await stored(db, caller) == (2501, 2501)


async def wait_until(condition, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class LostAck(UsageWriter):
    """Commits its first batch, then fails as if the acknowledgement had been lost."""

    lost = False

    async def _write(self, batch, **kw):
        new = await super()._write(batch, **kw)
        if not self.lost:
            self.lost = True
            raise ConnectionResetError("connection lost after COMMIT")
        return new


async def test_retry_after_ambiguous_commit_stores_once_and_charges_once(db: Database, caller: Caller):
    async with LostAck(db, batch_size=50, flush_interval=0.05, retry_initial=0.05) as writer:
        for i in range(120):
            writer.record(caller.rec(i, cost=0.01))
        assert await writer.flush(timeout=20)
        assert writer.failures == 1
    assert await stored(db, caller) == (120, 120)
    for spend in await spends(db, caller):
        assert spend == pytest.approx(1.2)
    async with db.sessions() as s, s.begin():  # the same records again, directly: nothing new
        assert await insert_usage(s, records=[caller.rec(i, cost=0.01) for i in range(120)], maybe_stored=True) == 0
    assert (await spends(db, caller))[0] == pytest.approx(1.2)


async def test_a_record_the_database_rejects_is_dropped_alone(db: Database, caller: Caller, caplog):
    bad = UsageRecord(request_id=f"{caller.tag}-bad", created_at=T0, model=None, route="/v1/chat/completions",
                      status=200, key_hash=caller.key_hash, cost=5.0)  # model is NOT NULL
    async with UsageWriter(db, batch_size=10, flush_interval=0.05) as writer:
        for i in range(3):
            writer.record(caller.rec(i, cost=0.5))
        writer.record(bad)
        for i in range(3, 6):
            writer.record(caller.rec(i, cost=0.5))
        assert await writer.flush(timeout=10)
        assert writer.rejected == 1 and writer.written == 6
    assert await stored(db, caller) == (6, 6)
    assert (await spends(db, caller))[0] == pytest.approx(3.0)
    assert f"usage record {caller.tag}-bad dropped" in caplog.text


class Counting(UsageWriter):
    """Counts its transactions."""

    attempts = 0

    async def _write(self, batch, **kw):
        self.attempts += 1
        return await super()._write(batch, **kw)


async def test_a_bad_record_is_bisected_out_of_its_batch(db: Database, caller: Caller, caplog):
    """One bad row used to make the writer redo its whole batch one row per transaction (500
    transactions); split in halves it takes about 2·log2(500) ≈ 18, and the bad row is set aside."""
    bad = UsageRecord(request_id=f"{caller.tag}-bad", created_at=T0, model=None, route="/v1/chat/completions",
                      status=200, key_hash=caller.key_hash, cost=5.0)  # model is NOT NULL
    writer = Counting(db, batch_size=500, flush_interval=3600)
    for i in range(499):
        writer.record(caller.rec(i, cost=0.01))
        if i == 321:
            writer.record(bad)
    async with writer:
        assert await writer.flush(timeout=30)
    assert writer.rejected == 1 and writer.written == 499
    assert writer.attempts <= 20, writer.attempts
    assert await stored(db, caller) == (499, 499)
    assert (await spends(db, caller))[0] == pytest.approx(4.99)
    assert caplog.text.count(f"usage record {caller.tag}-bad dropped") == 1


def test_records_are_made_storable_before_they_are_queued():
    rec = UsageRecord(request_id="r", created_at=T0, model="mo\x00ck" + "x" * 300, route="/v1/\ud800",
                      status=404, error_type="e" * 100)
    clean = safe(rec)
    assert clean.model == ("mo\ufffdck" + "x" * 300)[:255] and clean.route == "/v1/?" and len(clean.error_type) == 64
    fine = UsageRecord(request_id="r", created_at=T0, model="echo", route="/v1/chat/completions", status=200)
    assert safe(fine) is fine


async def test_full_buffer_drops_counts_and_logs_once(sqlite_url: str, caplog):
    db = Database(sqlite_url)
    caller = await make_caller(db)
    caplog.set_level(logging.WARNING, logger="keystile")
    try:
        writer = UsageWriter(db, batch_size=100, flush_interval=0.05, max_buffer=10)  # not started yet
        accepted = [writer.record(caller.rec(i)) for i in range(15)]
        assert accepted == [True] * 10 + [False] * 5
        assert writer.dropped == 5 and writer.pending == 10
        full = [r for r in caplog.records if "usage buffer full" in r.getMessage()]
        assert len(full) == 1 and full[0].name == "keystile"
        writer.start()
        assert await writer.flush(timeout=10)
        drained = [r.getMessage() for r in caplog.records if "dropped while it was full" in r.getMessage()]
        assert drained == ["usage buffer has room again: 5 usage records were dropped while it was full"]
        await writer.aclose()
        assert await stored(db, caller) == (10, 10)
    finally:
        await drop_caller(db, caller)
        await db.aclose()


async def test_a_full_buffer_spills_to_the_journal_and_is_written_from_it(sqlite_url: str, tmp_path: Path):
    db = Database(sqlite_url)
    caller = await make_caller(db)
    journal = Journal(tmp_path / "journal")
    journal.open()
    try:
        writer = UsageWriter(db, batch_size=100, flush_interval=0.05, max_buffer=10, journal=journal)
        assert [writer.record(caller.rec(i)) for i in range(15)] == [True] * 15
        assert writer.spilled == 5 and writer.dropped == 0 and writer.pending == 10
        async with writer:
            await wait_until(lambda: writer.replayed == 15, 10)  # the parked file holds all 15
        assert await stored(db, caller) == (15, 15)
        assert list((tmp_path / "journal").iterdir()) == []
    finally:
        await drop_caller(db, caller)
        await db.aclose()


async def test_aclose_drains_then_refuses(db: Database, caller: Caller):
    writer = UsageWriter(db, batch_size=1000, flush_interval=3600)
    writer.start()
    for i in range(300):
        writer.record(caller.rec(i))
    await writer.aclose(timeout=10)  # no flush first: closing writes what is buffered
    assert await stored(db, caller) == (300, 300)
    assert writer.record(caller.rec(300)) is False and writer.dropped_closed == 1


async def test_aclose_gives_up_after_its_timeout_when_the_database_is_gone(caplog):
    db = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing")
    writer = UsageWriter(db, flush_interval=0.05, retry_initial=0.05, retry_max=0.1)
    writer.start()
    writer.record(UsageRecord(request_id="never", created_at=T0, model="m", route="/v1/embeddings", status=200))
    started = asyncio.get_running_loop().time()
    await writer.aclose(timeout=0.5)
    assert asyncio.get_running_loop().time() - started < 3
    assert writer.failures > 0 and writer.pending == 1
    assert "usage writer closed with 1 usage records unwritten" in caplog.text
    await db.aclose()


async def test_data_errors_are_told_apart_from_outages(db: Database):
    async with db.sessions() as s:
        with pytest.raises(Exception) as bad_cast:
            await s.execute(text("SELECT CAST('x' AS INTEGER) + CAST(1 AS INTEGER)" if db.url.startswith("postgres")
                                 else "INSERT INTO spend_logs (request_id) VALUES (NULL)"))
    assert is_data_error(bad_cast.value)
    assert not is_data_error(ConnectionRefusedError(111, "Connect call failed"))
    gone = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing")
    with pytest.raises(Exception) as refused:
        async with gone.sessions() as s:
            await s.execute(text("SELECT 1"))
    assert not is_data_error(refused.value)
    await gone.aclose()


# --- queries ---------------------------------------------------------------------------------


async def test_spend_queries(db: Database, caller: Caller):
    # A window of days of our own (in 2031), so rows of other tests don't show up in the totals.
    recs = [caller.rec(i, cost=0.1 * (i + 1), created_at=T0 + timedelta(days=i % 3, minutes=i),
                       model="alpha" if i % 2 else "beta") for i in range(6)]
    async with db.sessions() as s, s.begin():
        assert await insert_usage(s, records=recs) == 6
    async with db.sessions() as s:
        logs = await spend_logs(s, key_hash=caller.key_hash)
        assert [r.request_id for r in logs] == [f"{caller.tag}-{i}" for i in (5, 2, 4, 1, 3, 0)]  # newest first
        assert logs[0] == recs[5]
        assert [r.request_id for r in await spend_logs(s, team_id=caller.team_id, model="alpha", limit=2,
                                                       offset=1)] == [f"{caller.tag}-1", f"{caller.tag}-3"]
        assert len(await spend_logs(s, user_id=caller.user_id, start=T0 + timedelta(days=1),
                                    end=T0 + timedelta(days=2))) == 2

        total = await global_spend(s, start=T0, end=T0 + timedelta(days=3))
        assert (total.requests, total.prompt_tokens, total.completion_tokens) == (6, 60, 30)
        assert total.spend == pytest.approx(2.1) and total.total_tokens == 90

        by_day = await usage_report(s, key_hash=caller.key_hash, by="day")
        assert [(g.group, g.requests) for g in by_day] == [("2031-05-17", 2), ("2031-05-18", 2), ("2031-05-19", 2)]
        assert by_day[0].cost == pytest.approx(0.1 + 0.4)
        by_model = await usage_report(s, team_id=caller.team_id, by="model")
        assert [(g.group, g.requests, g.prompt_tokens) for g in by_model] == [("alpha", 3, 30), ("beta", 3, 30)]
        assert by_model[0].cost == pytest.approx(1.2)
        by_key = await usage_report(s, key_hash=caller.key_hash, since=T0 + timedelta(days=2), by="key")
        assert [(g.group, g.requests, g.completion_tokens) for g in by_key] == [(caller.key_hash, 2, 10)]
        with pytest.raises(ValueError):
            await usage_report(s, by="week")


# --- prices ----------------------------------------------------------------------------------


@dataclass
class Configured:
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None


def test_cost_map():
    prices = PriceMap()
    assert prices.load() > 1000
    gpt = prices.cost("openai/gpt-4o", 1000, 1000)
    assert gpt > 0
    assert prices.cost("azure/gpt-4o", 1000, 1000) > 0  # the map's provider-prefixed names work too
    assert prices.cost("openai/gpt-4o", 1000, 1000, Configured(1e-3, 2e-3)) == pytest.approx(3.0)
    assert prices.cost("openai/gpt-4o", 1000, 0, Configured(input_cost_per_token=0.0)) == 0.0  # 0 is an override
    assert prices.cost("openai/gpt-4o", 0, 1000, Configured(input_cost_per_token=1.0)) == pytest.approx(gpt - prices.cost(
        "openai/gpt-4o", 1000, 0))  # the other field still comes from the map
    assert prices.cost("llamacpp/smollm2", 10_000, 10_000) == 0.0
    assert prices.cost("llamacpp/gpt-4o", 10_000, 10_000) == 0.0  # local, whatever its name
    assert prices.cost("llamacpp/smollm2", 1000, 1000, Configured(1e-6, 1e-6)) == pytest.approx(2e-3)
    assert prices.cost("hosted_vllm/some-unknown-model", 1000, 1000) == 0.0
    limit = prices.price("openai/gpt-4o").max_output_tokens
    assert limit and prices.max_cost("openai/gpt-4o", 100, None) == pytest.approx(prices.cost("openai/gpt-4o", 100, limit))
    assert prices.max_cost("openai/gpt-4o", 100, 50) == pytest.approx(prices.cost("openai/gpt-4o", 100, 50))
    assert prices.max_cost("hosted_vllm/x", 100, None, Configured(0.0, 1.0)) == 4096  # default completion limit


def test_cost_map_from_a_file_and_without_importing_litellm(tmp_path: Path):
    custom = tmp_path / "prices.json"
    custom.write_text('{"mine": {"litellm_provider": "openai", "input_cost_per_token": 0.5, '
                      '"output_cost_per_token": 1, "max_output_tokens": 8}}')
    prices = PriceMap(custom)
    assert prices.price("openai/mine") == Price(0.5, 1.0, 8)
    assert prices.lookup("anthropic/mine") is None  # the entry's provider must match
    code = ("import sys; from proxy.accounting.prices import PriceMap; p = PriceMap(); "
            "assert p.cost('openai/gpt-4o', 1, 1) > 0; assert 'litellm' not in sys.modules, 'litellm imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- the outage ------------------------------------------------------------------------------


class OwnPostgres:
    """A throwaway Postgres cluster in a temp dir, run as the `postgres` system user when we are root."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="keystile-pg-"))
        self.data, self.sock = self.base / "data", self.base / "sock"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        self.sock.mkdir()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
            shutil.chown(self.sock, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(PG_BIN / tool), *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._run("pg_ctl", "start", "-w", "-D", str(self.data), "-l", str(self.base / "log"), "-o",
                  f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data))

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries in {PG_BIN}")
    pg = OwnPostgres()
    try:
        pg.start()
        migrate(pg.url)
        yield pg
    finally:
        pg.destroy()


async def test_database_outage_loses_nothing_and_duplicates_nothing(own_postgres: OwnPostgres):
    db = Database(own_postgres.url)
    caller = await make_caller(db)
    writer = UsageWriter(db, batch_size=50, flush_interval=0.05, retry_initial=0.05, retry_max=0.5)
    writer.start()
    try:
        async def record(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                writer.record(caller.rec(i, cost=0.001))
                if i % 20 == 19:
                    await asyncio.sleep(0.01)  # a steady trickle, so batches are in flight when it stops

        await record(0, 300)
        await asyncio.to_thread(own_postgres.stop)
        await record(300, 700)
        await asyncio.sleep(2.0)
        assert writer.failures > 0 and writer.pending > 0, "the outage was not noticed"
        await asyncio.to_thread(own_postgres.start)
        await record(700, 1000)
        assert await writer.flush(timeout=30)
        print(f"outage: {writer.failures} failed attempts, {writer.written} written")
        assert writer.written == 1000 and writer.dropped == 0
        assert await stored(db, caller) == (1000, 1000)
        async with db.sessions() as s:
            ids = set((await s.scalars(select(SpendLog.request_id))).all())
        assert ids == {f"{caller.tag}-{i}" for i in range(1000)}
        for spend in await spends(db, caller):
            assert spend == pytest.approx(1.0)
    finally:
        await writer.aclose(timeout=5)
        await db.aclose()


def test_an_unusable_journal_directory_switches_the_journal_off(tmp_path: Path, caplog):
    (tmp_path / "file").write_text("")
    journal = Journal(tmp_path / "file" / "journal")  # under a file: cannot be made
    assert journal.open() == 0 and journal.broken
    assert not journal.append(UsageRecord(request_id="r", created_at=T0, model="m", route="/", status=200),
                              buffered=True)
    assert "cannot be written" in caplog.text
