"""Memory as Linux's /proc tells it, and whether a local model would fit in what is available now:
the worker's resident memory measured when it last ran (else its GGUF file and a fifth more: context,
buffers) plus the memory to leave to everything else, against /proc/meminfo's MemAvailable."""

from __future__ import annotations

import os

from . import errors


def proc_kib(path: str, field: str) -> int | None:
    """A `Field:  <n> kB` line of a /proc file, in KiB, or None where unknown (no /proc, no field)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def resident_bytes(pid: int) -> int | None:
    kib = proc_kib(f"/proc/{pid}/status", "VmRSS:")
    return None if kib is None else kib * 1024


def check_fits(name: str, footprint: int | None, model_path: str, reserve: int) -> None:
    """ModelLoading (503, Retry-After) when starting model `name`'s worker (`footprint` bytes, None:
    not measured yet) would leave less than `reserve` bytes available."""
    needed = footprint or _file_footprint(model_path)
    free = proc_kib("/proc/meminfo", "MemAvailable:")
    if needed is None or free is None or needed + reserve <= free * 1024:
        return
    kept = f" and min_free_memory_mb {reserve >> 20} MiB kept free" if reserve else ""
    raise errors.ModelLoading(f"model {name!r} is unloaded (idle) and would not fit in memory now: "
                              f"needs ~{needed >> 20} MiB{kept}, {free >> 10} MiB available; retry later")


def _file_footprint(path: str) -> int | None:
    try:
        return os.path.getsize(path) * 6 // 5
    except OSError:
        return None
