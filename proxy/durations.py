"""Durations as operators write them (`30s`, `10m`, `1h`, `7d`, `30d`) and budget windows."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_DURATION = re.compile(r"^\s*(\d{1,12})\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_SECONDS = 100 * 366 * 86400  # a century: any longer and "now + duration" can leave datetime's range


def parse_duration(text: str) -> int:
    """Seconds in a duration such as '30s', '10m', '1h', '7d', '30d'; ValueError naming the input."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"invalid duration {text!r}: use a positive number with s, m, h, d or w, e.g. '30d'")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_SECONDS:
        raise ValueError(f"duration {text!r} is too long: at most 100 years")
    return seconds


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def after(duration: str, start: datetime | None = None) -> datetime:
    """The time `duration` after `start` (default: now, UTC)."""
    return (start or utcnow()) + timedelta(seconds=parse_duration(duration))
