"""Reading py-spy's collapsed stacks (`--format raw`) for bench/relay_bench.py --profile: the
share of the event-loop thread's samples by package and by function, other threads apart.

    .venv/bin/python bench/profiling.py bench/results/profile-<time>-keystile-json-c32.txt [top]
"""

from __future__ import annotations

import sys

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


def main() -> None:
    with open(sys.argv[1]) as f:
        print(profile_summary(f.read(), int(sys.argv[2]) if len(sys.argv) > 2 else 25))


if __name__ == "__main__":
    main()
