"""The batched usage writer: the hot path hands records over in O(1) without touching the
database; one background task writes them in batches, one transaction per batch."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Sequence
from types import TracebackType

from sqlalchemy import exc as sa_exc

from ..db.engine import Database
from ..db.spend import insert_usage
from .record import UsageRecord

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
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def _first_line(error: BaseException) -> str:
    """The driver's message without SQLAlchemy's appended statement and parameters."""
    return str(error).split("\n", 1)[0]


class UsageWriter:
    """Buffers usage records in memory and writes them to spend_logs in batches.

    - `record(rec)`: synchronous, O(1), never touches the database. Must be called on the event
      loop's thread. When `max_buffer` records are waiting, new ones are dropped and counted; one
      warning is logged when dropping starts and one with the count when there is room again.
    - Batches: the writer wakes every `flush_interval` seconds, or as soon as `batch_size` records
      wait, and writes everything waiting in batches of at most `batch_size` records. Each batch
      is one transaction: its spend_logs rows plus the key, user and team spend they add
      (`proxy.db.spend.insert_usage`, idempotent by request_id).
    - Database down: a failed batch stays at the front of the buffer, in order, and is retried
      with exponential backoff (`retry_initial` doubling up to `retry_max` seconds) until it is
      written; records keep arriving behind it up to `max_buffer`. A retry after a commit whose
      acknowledgement was lost stores nothing twice. A batch the database rejects as data
      (constraint or data errors) is retried one record at a time and only the offending records
      are dropped, each logged.
    - `flush()` waits until everything recorded before the call is written; `aclose(timeout)`
      drains the buffer on shutdown and reports what it could not write within the timeout.
    """

    def __init__(self, db: Database, *, batch_size: int = 500, flush_interval: float = 0.5,
                 max_buffer: int = 100_000, retry_initial: float = 0.25, retry_max: float = 5.0):
        if batch_size < 1 or max_buffer < 1:
            raise ValueError("batch_size and max_buffer must be at least 1")
        self._db = db
        self.batch_size = batch_size
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
        self.failures = 0  # failed batch attempts (total)
        self._dropping = 0  # records dropped in the current buffer-full episode
        self._failing = 0  # consecutive failed attempts in the current outage
        self._one_by_one = 0  # records still to be written singly after a rejected batch
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False

    @property
    def pending(self) -> int:
        """Records waiting to be written."""
        return len(self._buffer)

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
        if self._closed or len(self._buffer) >= self.max_buffer:
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

    def _end_drop_episode(self, *, closing: bool = False) -> None:
        if self._dropping and (closing or len(self._buffer) < self.max_buffer):
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
        if self._buffer:
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
        while True:
            await self._due()
            while self._buffer:
                if not await self._write_front():
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                    continue
                delay = self.retry_initial
                if not self._more_due():
                    break  # a partial batch waits for the interval: few, large transactions
            if self._closing:
                self._closed = True  # set with the buffer empty and no await since: nothing is stranded
                return

    def _more_due(self) -> bool:
        return (len(self._buffer) >= self.batch_size or self._closing or self._one_by_one > 0
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
        """Try the batch at the front of the buffer; on success remove it. False when it failed."""
        size = 1 if self._one_by_one else self.batch_size
        batch = list(itertools.islice(self._buffer, size))
        try:
            new = await self._write(batch)
        except Exception as error:  # noqa: BLE001 - every failure is retried or isolated, never lost
            self.failures += 1
            if is_data_error(error):
                await self._rejected(batch, error)
                return True  # not an outage: go on at once (singly, or past the dropped record)
            self._failing += 1
            if self._failing == 1:
                log.warning("usage writes failing (%s: %s); %d records kept and retried with backoff",
                            type(error).__name__, _first_line(error), len(self._buffer))
            return False
        if self._failing:
            log.warning("usage writes resumed after %d failed attempts", self._failing)
            self._failing = 0
        self.written += new
        self._one_by_one = max(0, self._one_by_one - len(batch))
        await self._settle(len(batch))
        return True

    async def _rejected(self, batch: Sequence[UsageRecord], error: Exception) -> None:
        """A batch the database refuses as data: write its records singly; drop a single one."""
        if len(batch) > 1:
            log.warning("usage batch rejected by the database (%s); retrying its %d records one by one",
                        type(error).__name__, len(batch))
            self._one_by_one = len(batch)
            return
        log.error("usage record %s dropped: the database rejects it (%s: %s)", batch[0].request_id,
                  type(error).__name__, _first_line(error))
        self.rejected += 1
        self._one_by_one = max(0, self._one_by_one - 1)
        await self._settle(1)

    async def _settle(self, n: int) -> None:
        for _ in range(n):
            self._buffer.popleft()
        self._settled += n
        self._end_drop_episode()
        async with self._progress:
            self._progress.notify_all()

    async def _write(self, batch: Sequence[UsageRecord]) -> int:
        """One transaction: the batch's rows and the spend they add. Returns new rows stored."""
        async with self._db.sessions() as session, session.begin():
            return await insert_usage(session, records=batch, maybe_stored=self._failing > 0 or self._one_by_one > 0)
