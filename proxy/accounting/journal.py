"""The usage journal: every usage record is appended to a local file before it waits in memory for
the database, so no record is lost through a database outage, a restart or a crash of the gateway.

- Files ("segments") of one JSON line per record, in one directory; each process writes its own
  and holds an exclusive lock (flock) on every segment it still needs. `os.write` puts a line in
  the kernel's page cache at once, so a crash of the process (SIGKILL included) loses nothing;
  `sync()` fsyncs what was written since the last call (the writer calls it every flush interval),
  which bounds what a crash of the machine can lose to that interval.
- A segment is deleted once every record in it is written to the database. A segment holding
  records the memory buffer had no room for ("parked") is kept and replayed from the file.
- At start, segments no live process holds (left by a crash, a shutdown during an outage, or
  parked) are claimed and replayed. Replay is idempotent (request ids are unique; rows already
  stored are skipped and not charged again), so a record is stored exactly once.
- A journal that cannot be written (disk full, read-only) is switched off with one error logged;
  records are then kept in memory only, as before.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import itertools
import logging
import os
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson
from sqlalchemy.engine import make_url

from ..domain import UsageRecord

log = logging.getLogger("keystile")
SEGMENT_RECORDS = 10_000


def default_directory(database_url: str) -> Path:
    """Beside a SQLite database file (`keystile.db` -> `keystile.db.usage/`); otherwise
    `keystile-usage/<host-port-database>/` in the working directory, so gateways of different
    databases never replay each other's records."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db = Path(url.database)
        return db.with_name(db.name + ".usage")
    tag = f"{url.host or 'local'}-{url.port or 'default'}-{url.database or ''}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)[:80]
    return Path("keystile-usage") / f"{safe}-{hashlib.sha256(tag.encode()).hexdigest()[:8]}"


@dataclass(slots=True)
class _Segment:
    path: Path
    fd: int
    buffered: int = 0  # records appended here that also wait in the memory buffer
    settled: int = 0  # of those, written to the database (or set aside as bad data)
    appended: int = 0
    parked: bool = False  # holds records that are in this file only
    dirty: bool = False  # written since the last fsync


def decode(line: bytes) -> UsageRecord:
    fields = orjson.loads(line)
    fields["created_at"] = datetime.fromisoformat(fields["created_at"])
    return UsageRecord(**fields)


class Journal:
    def __init__(self, directory: Path, *, segment_records: int = SEGMENT_RECORDS):
        self.directory = directory
        self._segment_records = segment_records
        self._segments: deque[_Segment] = deque()
        self._leftovers: list[tuple[Path, int]] = []  # claimed files to replay, with their locked fds
        self._names = itertools.count()
        self.broken = False

    def open(self) -> int:
        """Create the directory and claim the segments no live process holds; returns how many.
        A directory that cannot be made or read switches the journal off (logged), not the gateway."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            paths = sorted(self.directory.glob("*.jsonl"))
        except OSError as exc:
            self._break(exc)
            return 0
        for path in paths:
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # its owner just finished with it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live process's
                continue
            if not path.exists():  # deleted by its owner between our open and lock
                os.close(fd)
                continue
            self._leftovers.append((path, fd))
        return len(self._leftovers)

    def append(self, rec: UsageRecord, *, buffered: bool) -> bool:
        """Write one record (one write(2): in the kernel before this returns, so before the
        answer it accounts for is sent); False when the journal is off or the write failed."""
        seg = self._segments[-1] if self._segments else None
        try:
            if seg is None or seg.appended >= self._segment_records:
                if self.broken:
                    return False
                seg = self._new_segment()
            os.write(seg.fd, orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
        except (OSError, TypeError) as exc:
            self._break(exc)
            return False
        seg.appended += 1
        seg.dirty = True
        if buffered:
            seg.buffered += 1
        else:
            seg.parked = True
        return True

    def _new_segment(self) -> _Segment:
        path = self.directory / f"{os.getpid()}-{os.urandom(4).hex()}-{next(self._names):06d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        seg = _Segment(path, fd)
        self._segments.append(seg)
        return seg

    def _break(self, exc: BaseException) -> None:
        self.broken = True
        for seg in self._segments:
            seg.appended = self._segment_records  # no more appends to any of them
        log.error("usage journal %s cannot be written (%s); usage records are kept in memory only from now on",
                  self.directory, exc)

    def settled(self, n: int) -> None:
        """`n` more buffered records (oldest first) are in the database: retire the segments whose
        buffered records are all written (deleted, or kept for replay when parked)."""
        while self._segments:
            seg = self._segments[0]
            take = min(n, seg.buffered - seg.settled)
            seg.settled += take
            n -= take
            if seg.settled < seg.buffered:
                return
            self._retire(self._segments.popleft())

    def _retire(self, seg: _Segment) -> None:
        if seg.parked:
            self._leftovers.append((seg.path, seg.fd))  # replayed from its file
            return
        try:
            seg.path.unlink()
        except OSError as exc:
            log.warning("usage journal: cannot remove %s (%s)", seg.path, exc)
        os.close(seg.fd)

    def leftovers(self) -> list[Path]:
        return [path for path, _ in self._leftovers]

    @staticmethod
    def read(path: Path) -> list[UsageRecord]:
        records = []
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    records.append(decode(line))
                except (ValueError, TypeError) as exc:  # a line torn by a crash of the machine
                    log.warning("usage journal %s line %d skipped: unreadable (%s)", path, number, exc)
        return records

    def replayed(self, path: Path) -> None:
        """A leftover segment is in the database: remove it."""
        self.release(path, remove=True)

    def release(self, path: Path, *, remove: bool = False) -> None:
        """Stop holding a leftover segment (removing its file, or leaving it for a later start)."""
        for i, (p, fd) in enumerate(self._leftovers):
            if p == path:
                del self._leftovers[i]
                if remove:
                    path.unlink(missing_ok=True)
                os.close(fd)
                return

    async def sync(self) -> None:
        """fsync every segment written since the last call (off the event loop)."""
        fds = []
        for seg in self._segments:
            if seg.dirty:
                seg.dirty = False
                fds.append(os.dup(seg.fd))  # our own descriptor: the segment may be retired meanwhile
        if fds:
            await asyncio.to_thread(_fsync_all, fds)

    def close(self) -> int:
        """Release every segment, keeping the files of records not written yet; returns how many
        records those hold."""
        kept = 0
        for seg in self._segments:
            if seg.parked or seg.settled < seg.buffered:
                kept += seg.appended - seg.settled
                try:
                    os.fsync(seg.fd)
                except OSError:
                    pass
            else:
                seg.path.unlink(missing_ok=True)
            os.close(seg.fd)
        self._segments.clear()
        for _, fd in self._leftovers:
            os.close(fd)
        self._leftovers.clear()
        return kept


def _fsync_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as exc:
            log.warning("usage journal: fsync failed (%s)", exc)
        finally:
            os.close(fd)
