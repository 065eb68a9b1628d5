"""Soak: Keystile's memory over time under load spread over many keys.

Starts bench/fast_upstream.py and a Keystile the way users start it (bench/keystile_server.py) with
`--keys` virtual keys seeded into its database, then drives it with wrk for `--duration` seconds,
each request with the next key (post.lua with BENCH_KEYS_FILE), in slices of `--interval` seconds,
and reads Keystile's RSS after each slice, and how many answered requests have no usage row in
the database yet (the usage writer's backlog, held in memory). Prints both against requests
served, and the verdict:
flat when RSS grew by at most `--max-growth` MiB from the first sample after `--warmup` seconds
(caches filling, the allocator settling) to the end. Writes the run as
JSON to bench/results/soak-<time>.json. Exit status is 0 whatever the figures (a report, not a
test), non-zero when something broke.

    .venv/bin/python bench/soak.py [--keys 10000] [--duration 360] [--warmup 120] [--interval 15] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from client import BODIES, sanity_check
from databases import Database, count_rows, make_database, seed_keys
from keystile_server import report_failure, start_keystile, stop_all
from load import wrk
from processes import BENCH, Server, start_upstream, wait_listening
from scenarios import Scenario

RESULTS = BENCH / "results"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Keystile's RSS over time with load spread over many keys.")
    p.add_argument("--keys", type=int, default=10_000, help="virtual keys seeded and used in turn (default 10000)")
    p.add_argument("--duration", type=float, default=360, help="seconds of load in all (default 360)")
    p.add_argument("--interval", type=float, default=15, help="seconds per slice, RSS read after each (default 15)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--warmup", type=float, default=120,
                   help="seconds of load before the baseline: caches filling, the allocator settling (default 120)")
    p.add_argument("--max-growth", type=float, default=10.0, help="MiB allowed after the warm-up (default 10)")
    p.add_argument("--database-url", metavar="URL", help="postgresql://… (a fresh database); default SQLite")
    p.add_argument("--settings", type=json.loads, default={}, metavar="JSON",
                   help='keystile_settings for the run, e.g. \'{"key_cache_ttl": 3600}\'')
    p.add_argument("--results", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="keystile-soak-"))
    keys: list[str] = []
    scenario = Scenario("soak", f"{args.keys:,} seeded virtual keys, each request with the next one",
                        prepare=lambda ks: {}, seed=lambda db: seed_keys(db, args.keys, keep=keys),
                        keystile_settings=args.settings)
    servers: list[Server] = []
    databases: list[Database] = []
    try:
        upstream = start_upstream(workdir, None)
        servers.append(upstream)
        wait_listening(upstream)
        ks_dir = workdir / "keystile"
        ks_dir.mkdir()
        db = make_database(args.database_url, "soak", ks_dir)
        databases.append(db)
        ks = start_keystile(upstream.url, scenario, ks_dir, None, db, "", servers)
        keys_file = workdir / "keys.txt"
        keys_file.write_text("\n".join(keys) + "\n")
        sanity_check("keystile", ks.server.url, {"Authorization": f"Bearer {keys[0]}"})
        samples = [{"t_s": 0.0, "requests": 0, "rss_mib": round(rss_mib(ks.server.pid), 1), "unwritten": 0}]
        sanity_rows = count_rows(db, "spend_logs")
        print(f"soak: {args.keys:,} keys, c={args.concurrency}, {args.duration:g} s in {args.interval:g} s slices; "
              f"RSS at start {samples[0]['rss_mib']} MiB", flush=True)
        started, total, errors = time.monotonic(), 0, 0
        while time.monotonic() - started < args.duration:
            result = wrk(ks.server.url, concurrency=args.concurrency, seconds=args.interval, body=BODIES["json"],
                         headers={}, cpus=None, env={"BENCH_KEYS_FILE": str(keys_file)})
            ks.server.check_alive()
            total += result["requests"]
            errors += sum(result["errors"].values())
            sample = {"t_s": round(time.monotonic() - started, 1), "requests": total,
                      "rss_mib": round(rss_mib(ks.server.pid), 1),
                      "rps": round(result["requests"] / (result["duration_us"] / 1e6)),
                      "unwritten": max(0, total - (count_rows(db, "spend_logs") - sanity_rows))}
            samples.append(sample)
            print(f"  {sample['t_s']:7.1f} s  {total:>9,} requests  {sample['rps']:>6,} req/s  "
                  f"RSS {sample['rss_mib']:7.1f} MiB  usage records not yet written {sample['unwritten']:>7,}",
                  flush=True)
        after = [s for s in samples if s["t_s"] >= args.warmup]
        base = after[0] if after else samples[-1]
        growth = samples[-1]["rss_mib"] - base["rss_mib"]
        verdict = "FLAT" if growth <= args.max_growth else "GROWING"
        if len(after) < 3:
            verdict = "TOO SHORT"  # fewer than two slices after the warm-up: nothing to judge
        print(f"RSS after warm-up {base['rss_mib']} MiB ({base['requests']:,} requests), at the end "
              f"{samples[-1]['rss_mib']} MiB ({total:,} requests): {growth:+.1f} MiB -> {verdict} "
              f"(at most {args.max_growth:g} MiB allowed); {errors} errors")
        args.results.mkdir(parents=True, exist_ok=True)
        out = args.results / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "samples": samples,
                                   "growth_mib": round(growth, 1), "verdict": verdict, "errors": errors}, indent=2))
        print(f"results: {out}")
        return 0
    except Exception as exc:
        report_failure("soak", exc, servers)
        return 1
    finally:
        stop_all(servers, databases)


if __name__ == "__main__":
    sys.exit(main())
