"""The batched usage writer: the hot path hands records over in O(1) without touching the
database; one background task writes them in batches, one transaction per batch."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections import deque
from collections.abc import Sequence
from types import TracebackType

from sqlalchemy import exc as sa_exc

from ..db.engine import Database
from ..db.models import SpendLog
from ..db.spend import insert_usage
from ..domain import UsageRecord
from .journal import Journal

log = logging.getLogger("keystile")


def is_data_error(error: BaseException) -> bool:
    """True when the database rejected the rows themselves (SQLSTATE class 22 data exception or
    23 integrity violation), so retrying the same rows can never succeed. Anything else
    (connection refused or reset, server shutting down or starting up, timeouts) is transient."""
    if isinstance(error, sa_exc.DataError | sa_exc.IntegrityError):
        return True
    seen: BaseException | None = error
    for _ in range(5):  # the driver's exception sits a few causes down (sqlalchemy -> adapter -> asyncpg)
        if seen is None:
            break
        state = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(state, str) and state[:2] in ("22", "23"):
            return True
        # A value the driver could not even send (wrong type, unencodable text): the row's fault.
        if isinstance(seen, TypeError | ValueError) and not isinstance(seen, OSError):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def _first_line(error: BaseException) -> str:
    """The driver's message without SQLAlchemy's appended statement and parameters."""
    return str(error).split("\n", 1)[0]


def _text_limits() -> dict[str, int | None]:
    return {c.key: getattr(c.type, "length", None) for c in SpendLog.__table__.columns  # type: ignore[attr-defined]
            if c.key in {f.name for f in dataclasses.fields(UsageRecord)}
            and c.type.python_type is str}


TEXT_LIMITS = _text_limits()
# The text fields a caller can put anything into: the model (request body), the route (a URL path
# may name a model) and the user and team (a JWT's claims). The others are Keystile's own values
# (request id, deployment id, error type) or come from its database (key hash).
FROM_CALLERS = tuple((name, TEXT_LIMITS[name] or 0) for name in ("model", "route", "user_id", "team_id"))


def _safe_text(value: str, limit: int | None) -> str:
    if "\x00" in value:  # Postgres text cannot hold NUL
        value = value.replace("\x00", "\ufffd")
    if limit is not None and len(value) > limit:
        value = value[:limit]
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:  # lone surrogates from a JSON body's \ud800
            value = value.encode("utf-8", "replace").decode()
    return value


def safe(rec: UsageRecord) -> UsageRecord:
    """The record with the text a caller chose storable in any database: NUL replaced, lone
    surrogates replaced, cut to its column's length. The same record when nothing needs changing
    (the common case costs well under a microsecond)."""
    for name, limit in FROM_CALLERS:
        value = getattr(rec, name)
        if value.__class__ is str and (len(value) > limit or "\x00" in value or not value.isascii()):
            break
    else:
        return rec
    changes = {}
    for name, limit in TEXT_LIMITS.items():
        value = getattr(rec, name)
        if value.__class__ is str:
            clean = _safe_text(value, limit)
            if clean is not value:
                changes[name] = clean
    return dataclasses.replace(rec, **changes) if changes else rec


class UsageWriter:
    """Buffers usage records in memory and writes them to spend_logs in batches.

    - `record(rec)`: synchronous, O(1), never touches the database. Must be called on the event
      loop's thread. When `max_buffer` records are waiting, new ones are dropped and counted; one
      warning is logged when dropping starts and one with the count when there is room again.
    - Batches: the writer wakes every `flush_interval` seconds, or as soon as `batch_size` records
      wait, and writes everything waiting in batches of at most `batch_size` records, or of
      `catch_up` times that while more than a batch waits: on a saturated event loop each
      transaction costs several loop turns whatever its size, so with small batches the writer
      drained more slowly than requests arrived and its backlog (and RSS, about 1 KiB a record)
      climbed toward `max_buffer` (bench/soak.py). Each batch
      is one transaction: its spend_logs rows plus the key, user and team spend they add
      (`proxy.db.spend.insert_usage`, idempotent by request_id).
    - Records are made storable before they are queued (`safe`: no NUL, no lone surrogates,
      text cut to its column), so one caller's odd model name cannot fail everyone's batch.
    - Database down: a failed batch stays at the front of the buffer, in order, and is retried
      with exponential backoff (`retry_initial` doubling up to `retry_max` seconds) until it is
      written; records keep arriving behind it up to `max_buffer`. A retry after a commit whose
      acknowledgement was lost stores nothing twice. A batch the database rejects as data
      (constraint or data errors) is split in halves until the bad records are alone: the good
      ones are written in O(log n) transactions per bad record, and each bad one is set aside,
      logged, and never retried.
    - With a `journal` (journal.py) every record is also appended to a local file before it is
      queued, and the files are replayed at the next start: nothing is lost through an outage, a
      restart or a crash. When the buffer is full, records go to the journal only (replayed when
      the buffer has drained) instead of being dropped.
    - `flush()` waits until everything recorded before the call is written; `aclose(timeout)`
      drains the buffer on shutdown and reports what it could not write within the timeout
      (kept in the journal when there is one).
    """

    def __init__(self, db: Database, *, batch_size: int = 500, flush_interval: float = 0.5,
                 max_buffer: int = 100_000, retry_initial: float = 0.25, retry_max: float = 5.0,
                 journal: Journal | None = None, catch_up: int = 10):
        if batch_size < 1 or max_buffer < 1:
            raise ValueError("batch_size and max_buffer must be at least 1")
        self._db = db
        self._journal = journal
        self.batch_size = batch_size
        self.catch_up = max(1, catch_up)
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._buffer: deque[UsageRecord] = deque()
        self._accepted = 0  # records ever buffered
        self._settled = 0  # records ever removed from the front (written, or rejected as bad data)
        self._flush_upto = 0  # flush() callers wait until this many records are settled
        self.written = 0  # new spend_logs rows stored (duplicates of stored request ids not counted)
        self.dropped = 0  # records refused because the buffer was full (total)
        self.dropped_closed = 0  # records refused because the writer was closed
        self.rejected = 0  # records the database refused as data and that were dropped
        self.spilled = 0  # records the buffer had no room for, kept in the journal only
        self.replayed = 0  # records written from journal files (earlier runs, or spilled)
        self.failures = 0  # failed batch attempts (total)
        self.batches = 0  # batches from the buffer written (transactions, bisected ones counted once)
        self._dropping = 0  # records dropped in the current buffer-full episode
        self._failing = 0  # consecutive failed attempts in the current outage
        self._uncertain = 0  # records at the front that an attempt with a lost answer may have stored
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False

    @property
    def pending(self) -> int:
        """Records waiting to be written."""
        return len(self._buffer)

    @property
    def oldest(self) -> UsageRecord | None:
        """The oldest record waiting to be written."""
        return self._buffer[0] if self._buffer else None

    def start(self) -> None:
        """Start the background task (call on the running event loop, e.g. in the app's lifespan)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="keystile-usage-writer")
            self._task.add_done_callback(self._report_crash)

    def _report_crash(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("usage writer stopped unexpectedly with %d records unwritten", len(self._buffer),
                      exc_info=task.exception())

    def record(self, rec: UsageRecord) -> bool:
        """Queue one record for writing; False when it was dropped (buffer full or writer closed)."""
        if self._closed:
            self._drop()
            return False
        rec = safe(rec)
        room = len(self._buffer) < self.max_buffer
        journaled = self._journal is not None and self._journal.append(rec, buffered=room)
        if not room:
            if journaled:
                self._spill()
                return True
            self._drop()
            return False
        self._buffer.append(rec)
        self._accepted += 1
        if len(self._buffer) >= self.batch_size:
            self._wake.set()
        return True

    def _drop(self) -> None:
        if self._closed:
            if not self.dropped_closed:
                log.warning("usage records arriving after the usage writer closed are dropped")
            self.dropped_closed += 1
            return
        if self._dropping == 0:
            log.warning("usage buffer full (%d records waiting for the database): dropping new usage "
                        "records until it drains", len(self._buffer))
        self._dropping += 1
        self.dropped += 1

    def _spill(self) -> None:
        if self._dropping == 0:
            log.warning("usage buffer full (%d records waiting for the database): new usage records go to the "
                        "journal only until it drains", len(self._buffer))
        self._dropping += 1
        self.spilled += 1

    def _end_drop_episode(self, *, closing: bool = False) -> None:
        if self._dropping and (closing or len(self._buffer) < self.max_buffer):
            if self._journal is not None and self.spilled:
                log.warning("usage buffer has room again: %d usage records went to the journal only while it "
                            "was full (written from there)", self._dropping)
            else:
                log.warning("usage buffer has room again: %d usage records were dropped while it was full",
                            self._dropping)
            self._dropping = 0

    async def flush(self, timeout: float | None = None) -> bool:
        """Write everything recorded so far now; True once it is all settled, False on timeout."""
        target = self._accepted
        self._flush_upto = max(self._flush_upto, target)
        self._wake.set()

        async def settled() -> None:
            async with self._progress:
                await self._progress.wait_for(lambda: self._settled >= target)

        try:
            await asyncio.wait_for(settled(), timeout)
            return True
        except TimeoutError:
            return False

    async def aclose(self, timeout: float = 10.0) -> None:
        """Graceful shutdown: write what is buffered, and anything recorded meanwhile, retrying
        through an outage for up to `timeout` seconds; then stop the task. From then on `record()`
        refuses records. Records still unwritten at the timeout are logged as lost."""
        self._closing = True
        self._wake.set()
        if self._task is None and self._buffer:
            self.start()  # never started: still write what was recorded
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        self._closed = True
        self._end_drop_episode(closing=True)
        kept = self._journal.close() if self._journal is not None else 0
        if kept:
            log.warning("usage writer closed with %d usage records not yet in the database: kept in the usage "
                        "journal %s, written at the next start", kept, self._journal.directory)  # type: ignore[union-attr]
        elif self._buffer:
            log.error("usage writer closed with %d usage records unwritten (not written within %.1f s)",
                      len(self._buffer), timeout)

    async def __aenter__(self) -> UsageWriter:
        self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _run(self) -> None:
        delay = self.retry_initial
        await self._replay_leftovers()  # earlier runs' records first
        while True:
            await self._due()
            if self._journal is not None:
                await self._journal.sync()
            while self._buffer:
                if not await self._write_front():
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                    continue
                delay = self.retry_initial
                if not self._more_due():
                    break  # a partial batch waits for the interval: few, large transactions
            if not self._buffer:
                await self._replay_leftovers()  # spilled while the buffer was full
            if self._closing:
                if not self._buffer:
                    self._closed = True  # set with the buffer empty and no await since: nothing is stranded
                    return

    async def _replay_leftovers(self) -> None:
        """Write the journal files no process holds (earlier runs, spilled records), then remove them."""
        if self._journal is None:
            return
        for path in self._journal.leftovers():
            try:
                records = Journal.read(path)
            except OSError as exc:
                log.error("usage journal: cannot read %s (%s); left in place", path, exc)
                self._journal.release(path)
                continue
            delay = self.retry_initial
            done = 0
            while done < len(records):
                chunk = records[done:done + self.batch_size]
                try:
                    await self._write_isolating(chunk, front=False)
                except Exception as error:  # noqa: BLE001 - an outage: retried with backoff
                    self._failed(error, len(self._buffer) + len(records) - done)
                    if self._closing:
                        return  # the file stays for the next start
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                    continue
                self._resumed()
                done += len(chunk)
            self.replayed += len(records)
            self._journal.replayed(path)
            log.info("usage journal: %d records from %s written", len(records), path.name)

    def _more_due(self) -> bool:
        return (len(self._buffer) >= self.batch_size or self._closing
                or self._settled < self._flush_upto)

    async def _due(self) -> None:
        """Return when a batch is due: enough records, a flush or close asked for, or the interval."""
        self._wake.clear()
        if self._closing or len(self._buffer) >= self.batch_size:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), self.flush_interval)
        except TimeoutError:
            pass

    async def _write_front(self) -> bool:
        """Write the batch at the front of the buffer, setting bad records aside; False when the
        database could not be reached (what was written is settled, the rest stays in front)."""
        behind = len(self._buffer) > self.batch_size
        batch = list(itertools.islice(self._buffer, self.batch_size * self.catch_up if behind else self.batch_size))
        try:
            await self._write_isolating(batch, front=True)
        except Exception as error:  # noqa: BLE001 - every failure is retried or isolated, never lost
            self._failed(error, len(self._buffer))
            self._uncertain = max(self._uncertain, len(batch))
            return False
        self.batches += 1
        self._resumed()
        return True

    def _failed(self, error: Exception, waiting: int) -> None:
        self.failures += 1
        self._failing += 1
        if self._failing == 1:
            log.warning("usage writes failing (%s: %s); %d records kept and retried with backoff",
                        type(error).__name__, _first_line(error), waiting)

    def _resumed(self) -> None:
        if self._failing:
            log.warning("usage writes resumed after %d failed attempts", self._failing)
            self._failing = 0

    async def _write_isolating(self, batch: Sequence[UsageRecord], *, front: bool) -> None:
        """Write `batch` in one transaction; if the database rejects it as data, write each half
        the same way, down to single records, which are set aside. Records written (or set aside)
        are settled as it goes when they are the buffer's `front`. An outage raises."""
        try:
            new = await self._write(batch, maybe_stored=self._uncertain > 0 or not front)
        except Exception as error:
            if not is_data_error(error):
                raise
            self.failures += 1
            if len(batch) == 1:
                log.error("usage record %s dropped: the database rejects it (%s: %s)", batch[0].request_id,
                          type(error).__name__, _first_line(error))
                self.rejected += 1
                if front:
                    await self._settle(1)
                return
            log.warning("usage batch of %d rejected by the database (%s); splitting it to set the bad records aside",
                        len(batch), type(error).__name__)
            half = len(batch) // 2
            await self._write_isolating(batch[:half], front=front)
            await self._write_isolating(batch[half:], front=front)
            return
        self.written += new
        if front:
            await self._settle(len(batch))

    async def _settle(self, n: int) -> None:
        for _ in range(n):
            self._buffer.popleft()
        self._settled += n
        self._uncertain = max(0, self._uncertain - n)
        if self._journal is not None:
            self._journal.settled(n)
        self._end_drop_episode()
        async with self._progress:
            self._progress.notify_all()

    async def _write(self, batch: Sequence[UsageRecord], *, maybe_stored: bool) -> int:
        """One transaction: the batch's rows and the spend they add. Returns new rows stored."""
        async with self._db.sessions() as session, session.begin():
            return await insert_usage(session, records=batch, maybe_stored=maybe_stored)
