"""CPU and memory of a process from /proc (Linux), for the deployment log stream's `metadata`."""

from __future__ import annotations

import os
import time

from backends.memory import proc_kib

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def _gib(kib: int) -> str:
    return f"{kib / 1024 / 1024:.2f}GiB"


class ProcessSampler:
    """`sample()` -> {"is_running", "cpu_usage": "1.90%", "memory_usage": "0.21GiB / 7.66GiB"}; the CPU
    share is over the time since the previous sample."""

    def __init__(self) -> None:
        self._last: tuple[int, float, float] | None = None  # pid, cpu seconds, wall time

    def sample(self, pid: int | None) -> dict:
        cpu = _cpu_seconds(pid) if pid else None
        if pid is None or cpu is None:
            return {"is_running": False}
        now = time.monotonic()
        share = 0.0
        if self._last is not None and self._last[0] == pid and now > self._last[2]:
            share = 100.0 * (cpu - self._last[1]) / (now - self._last[2])
        self._last = (pid, cpu, now)
        rss = proc_kib(f"/proc/{pid}/status", "VmRSS:") or 0
        total = proc_kib("/proc/meminfo", "MemTotal:") or 0
        return {"is_running": True, "pid": pid, "cpu_usage": f"{share:.2f}%",
                "memory_usage": f"{_gib(rss)} / {_gib(total)}"}
