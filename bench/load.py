"""The load of bench/relay_bench.py: wrk against a target, and the CPU it cost, read from /proc
(the server under test, the upstream, the target's Redis/Postgres processes, everything else)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from client import BODIES
from processes import BENCH, Server, affinity

LUA = BENCH / "post.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WRK_THREADS = {1: 1}  # concurrency -> wrk threads; anything else gets 2


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_process_seconds() -> float:
    """CPU time all processes on the machine spent (user, nice, system; all cores), from /proc/stat.
    Interrupt and softirq time is left out: loopback traffic is accounted there, not to a process."""
    with open("/proc/stat") as f:
        user, nice, system = (int(x) for x in f.readline().split()[1:4])
    return (user + nice + system) / CLK_TCK


def cpu_seconds_or_0(pid: int) -> float:
    """cpu_seconds of a process that may be gone, or not ours to read."""
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Target:
    name: str
    server: Server
    headers: dict[str, str]
    # Processes outside the benchmark that do this target's work (the Redis server, its Postgres
    # backends): their CPU is counted per request apart, and not as other load.
    aux: Callable[[], list[int]] | None = None


@dataclass
class Run:
    target: str
    mode: str
    concurrency: int
    round: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    requests: int
    errors: int
    target_cpu_us_per_req: float  # CPU the server under test spent per request
    upstream_cpu_us_per_req: float
    aux_cpu_us_per_req: float  # CPU of the target's Redis server / Postgres backends per request
    other_cpu_pct: float  # CPU used by processes outside this benchmark, % of one core, on average
    wrk: dict


def wrk(url: str, *, concurrency: int, seconds: float, body: dict, headers: dict[str, str],
        cpus: set[int] | None, env: dict[str, str] | None = None) -> dict:
    """`env`: more for post.lua (BENCH_KEYS_FILE)."""
    threads = WRK_THREADS.get(concurrency, 2)
    env = {**os.environ, "BENCH_BODY": json.dumps(body, separators=(",", ":")),
           "BENCH_AUTH": headers.get("Authorization", ""), **(env or {})}
    argv = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "--latency", "-s", str(LUA), url + "/v1/chat/completions"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, preexec_fn=affinity(cpus))
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON "))
    raise RuntimeError(f"wrk gave no result (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")


def measure(target: Target, upstream: Server, mode: str, concurrency: int, rnd: int, seconds: float,
            wrk_cpus: set[int] | None) -> Run:
    target.server.check_alive()
    upstream.check_alive()
    aux_pids = target.aux() if target.aux else []
    a0 = sum(cpu_seconds_or_0(p) for p in aux_pids)
    t0, u0, s0 = cpu_seconds(target.server.pid), cpu_seconds(upstream.pid), system_process_seconds()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.monotonic()
    result = wrk(target.server.url, concurrency=concurrency, seconds=seconds, body=BODIES[mode],
                 headers=target.headers, cpus=wrk_cpus)
    wall = time.monotonic() - wall0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t1, u1, s1 = cpu_seconds(target.server.pid), cpu_seconds(upstream.pid), system_process_seconds()
    aux_cpu = max(0.0, sum(cpu_seconds_or_0(p) for p in aux_pids) - a0)
    wrk_cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    own_cpu = (t1 - t0) + (u1 - u0) + wrk_cpu + aux_cpu
    n = max(1, result["requests"])
    errors = sum(result["errors"].values())
    lat = result["latency_us"]
    return Run(
        target=target.name, mode=mode, concurrency=concurrency, round=rnd,
        rps=result["requests"] / (result["duration_us"] / 1e6), p50_ms=lat["p50"] / 1e3, p90_ms=lat["p90"] / 1e3,
        p99_ms=lat["p99"] / 1e3, mean_ms=lat["mean"] / 1e3, requests=result["requests"], errors=errors,
        target_cpu_us_per_req=(t1 - t0) / n * 1e6, upstream_cpu_us_per_req=(u1 - u0) / n * 1e6,
        aux_cpu_us_per_req=aux_cpu / n * 1e6,
        other_cpu_pct=max(0.0, (s1 - s0) - own_cpu) / wall * 100, wrk=result,
    )
