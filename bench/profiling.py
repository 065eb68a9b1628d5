"""py-spy for bench/relay_bench.py --profile: recording each target under load, and reading the
collapsed stacks (`--format raw`): the share of the event-loop thread's samples by package and by
function, other threads apart.

    .venv/bin/python bench/profiling.py bench/results/profile-<time>-keystile-json-c32.txt [top]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from load import Target, measure
from processes import BIN, Server, affinity

_GROUPS = [("proxy/", "keystile proxy/"), ("backends/", "keystile backends/"), ("fastapi/", "fastapi"),
           ("starlette/", "starlette"), ("pydantic", "pydantic"), ("aiohttp/", "aiohttp"), ("uvicorn/", "uvicorn"),
           ("asyncio/", "asyncio"), ("anyio/", "anyio"), ("uvloop/", "uvloop"), ("orjson", "orjson")]


def _group(frame: str) -> str | None:
    """The package a py-spy frame `func (path/file.py:line)` belongs to, or None."""
    where = frame[frame.rfind("(") + 1:]
    for prefix, name in _GROUPS:
        if where.startswith(prefix):
            return name
    return None


_IDLE_LEAVES = ("Condition.wait (threading.py", "Queue.get (queue.py", "Event.wait (threading.py",
                "SimpleQueue.get", "_wait_for_tstate_lock (threading.py")


def profile_summary(raw: str, top: int = 25) -> str:
    """Self and inclusive share per function of the event-loop thread's samples, from py-spy's
    collapsed stacks. Other threads (anyio's pool, aiosqlite) are summed apart, idle waits left out."""
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    groups: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        if any(f.startswith("Thread._bootstrap ") for f in frames):
            if not frames[-1].startswith(_IDLE_LEAVES):
                run = next((f for f in frames if f.startswith(("WorkerThread.run", "Thread.run", "_worker"))), frames[-1])
                threads[f"{run} -> {frames[-1]}"] = threads.get(f"{run} -> {frames[-1]}", 0) + n
            continue
        total += n
        self_t[frames[-1]] = self_t.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
        # A sample belongs to the innermost frame of a known package (C code it calls counts there).
        owner = next((g for g in map(_group, reversed(frames)) if g), "other")
        groups[owner] = groups.get(owner, 0) + n
    if not total:
        return "(no samples)"
    pct = lambda n: f"{100 * n / total:5.1f}%"  # noqa: E731
    busy = sum(threads.values())
    lines = [f"{total} samples on the event-loop thread; other threads busy for {pct(busy).strip()} as much "
             "(known idle waits left out; 'Runner.run' self time is the event loop's own C code, including "
             "epoll waits the sampler cannot tell from work). By package (innermost known frame):"]
    lines += [f"  {pct(n)}  {g}" for g, n in sorted(groups.items(), key=lambda kv: -kv[1])]
    lines.append(f"Top {top} by self time:")
    lines += [f"  {pct(n)}  {f}" for f, n in sorted(self_t.items(), key=lambda kv: -kv[1])[:top]]
    lines.append(f"Top {top} by inclusive time:")
    lines += [f"  {pct(n)}  {f}" for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]]
    if threads:
        lines.append("Other threads, busiest stacks (thread entry -> leaf):")
        lines += [f"  {pct(n)}  {f}" for f, n in sorted(threads.items(), key=lambda kv: -kv[1])[:8]]
    return "\n".join(lines)


def profile(targets: list[Target], upstream: Server, seconds: float, wrk_cpus: set[int] | None, out_dir: Path,
            stamp: str, native: bool) -> list[Path]:
    """py-spy each target under load at c=32 (JSON, then streaming): collapsed stacks saved to
    bench/results/ (open them in speedscope or flamegraph.pl) and a top-functions summary printed.

    Sampling is --nonblocking: pausing the process for each sample (py-spy's default) slows a
    process with many threads (anyio's pool, aiosqlite) several-fold and skews the picture. The
    price is that some stacks come out cut short, so self time is exact and inclusive time a
    lower bound."""
    spy = BIN / "py-spy"
    if not spy.exists():
        found = shutil.which("py-spy")
        if not found:
            print("--profile: py-spy is not installed (.venv/bin/pip install py-spy); skipped", file=sys.stderr)
            return []
        spy = Path(found)
    paths = []
    for mode in ("json", "stream"):
        for target in targets:
            path = out_dir / f"profile-{stamp}-{target.name}-{mode}-c32.txt"
            argv = [str(spy), "record", "--pid", str(target.server.pid), "--duration", str(max(1, round(seconds))),
                    "--rate", "200", "--format", "raw", "--nonblocking", "--output", str(path)]
            argv += ["--native"] if native else []
            rec = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   preexec_fn=affinity(wrk_cpus))
            time.sleep(0.5)
            run = measure(target, upstream, mode, 32, -1, seconds, wrk_cpus)
            _, err = rec.communicate(timeout=120)
            if rec.returncode != 0 or not path.exists():
                print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
                continue
            paths.append(path)
            print(f"\n=== {target.name}, {mode}, c=32, under py-spy: {run.rps:.0f} req/s, "
                  f"{run.target_cpu_us_per_req:.0f} cpu-us/req — {path}")
            print(profile_summary(path.read_text()))
    return paths


def main() -> None:
    with open(sys.argv[1]) as f:
        print(profile_summary(f.read(), int(sys.argv[2]) if len(sys.argv) > 2 else 25))


if __name__ == "__main__":
    main()
