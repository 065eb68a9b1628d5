"""Time arithmetic shared by both limiters: rate windows, budget windows and the reset strings.

Rate windows (rpm/tpm) are fixed 60-second windows aligned to the Unix epoch: window number
`floor(now / 60)`. Every instance computes the same window for the same instant (the Redis limiter
uses the Redis server's clock, so instances with skewed clocks still agree), and a window's counts
are exact: "rpm_limit 10" admits exactly 10 requests between hh:mm:00 and hh:mm:59.999. The cost
of fixed windows is the boundary burst (up to 2x the limit across two adjacent windows); that is
the trade for one atomic counter per scope and no per-request log.

Budget windows are identified by the epoch second at which they reset; `next_reset` computes it.
"""

from __future__ import annotations

import math

from ..durations import parse_duration

__all__ = ["WINDOW_S", "format_reset", "next_reset", "parse_duration", "rate_window"]

WINDOW_S = 60
"""Length of an rpm/tpm window in seconds."""


def rate_window(now: float) -> tuple[int, float]:
    """The rate window containing `now` and the seconds until it ends (0 < reset <= 60)."""
    window = math.floor(now / WINDOW_S)
    return window, (window + 1) * WINDOW_S - now


def next_reset(duration_s: float, now: float, *, anchor: float | None = None) -> float:
    """The first budget reset strictly after `now` on the grid `anchor + k * duration_s`.

    With an anchor (the previous `budget_reset_at`, or the creation time of a key) the windows keep
    their phase: `next_reset(86400, now, anchor=now)` is `now + 1 day`, and a stored reset time
    that has passed rolls forward by whole durations. Without one the grid is aligned to the Unix
    epoch, so every instance agrees on the window without coordination.
    """
    if duration_s <= 0:
        raise ValueError(f"budget duration must be positive, got {duration_s!r}")
    base = 0.0 if anchor is None else anchor
    steps = math.floor((now - base) / duration_s) + 1
    reset = base + steps * duration_s
    return reset if reset > now else reset + duration_s


def format_reset(seconds: float) -> str:
    """A reset delay the way OpenAI writes it: `250ms` below a second, else `37s`, `6m0s`, `1h2m3s`.

    Whole seconds are rounded up, so a client that waits that long finds the window reset.
    """
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
