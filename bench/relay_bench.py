"""Keystile against a minimal relay, in one run, in front of the same fast local upstream.

Starts three processes — bench/fast_upstream.py, bench/minimal_relay.py, and Keystile the way users
start it (`keystile db upgrade`, `keystile serve --config ...`) — then drives each with wrk at
concurrency 1 and 32, non-streaming and streaming. Measurements alternate between the targets
(relay, keystile, keystile, relay, ...) after a warm-up each, so drift on a shared machine hits both
alike. Prints a table, the Keystile/relay ratios and the issue's targets (PASS/FAIL), and writes
the whole run as JSON to bench/results/. Exit status is 0 whatever the figures: this is a report,
not a test; it is non-zero only when something broke (a server did not start, a sanity request
failed, wrk is missing).

    .venv/bin/python bench/relay_bench.py [--duration 8] [--rounds 2] [--scenario master ...] [--profile]

With several scenarios (`--scenario master keys100k local-limits redis-limits`) each gets its own
Keystile, all started before the load, and the relay and every Keystile are measured in one
alternation; the ratios per scenario, and each one's against `master`, come from the same run.

The work is split across bench/: processes.py (spawning the upstream and the relay),
keystile_server.py and databases.py (a Keystile per scenario, its database and seeded keys),
scenarios.py, client.py (sanity requests), load.py (wrk and /proc CPU), report.py (the figures
and targets), profiling.py (py-spy). This file is the command line and the run's order.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
from dataclasses import asdict
from pathlib import Path

from client import BODIES, sanity_check
from databases import Database, pg_server
from keystile_server import Keystile, report_failure, start_scenario, stop_all
from load import Run, Target, measure, wrk
from processes import (
    BENCH,
    ROOT,
    Server,
    start_relay,
    start_upstream,
    wait_listening,
)
from profiling import profile
from report import evaluate, print_scenarios, print_table, summarize
from scenarios import SCENARIOS

RESULTS = BENCH / "results"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "proxy", "backends"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except OSError:
        return None



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Keystile vs a minimal aiohttp relay, same fast upstream, one run.")
    p.add_argument("--duration", type=float, default=8, help="seconds per measurement (default 8)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load before each measurement")
    p.add_argument("--rounds", type=int, default=2,
                   help="measurements per target and cell, alternated relay/keystile (default 2)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--modes", nargs="+", choices=list(BODIES), default=list(BODIES))
    p.add_argument("--scenario", nargs="+", choices=list(SCENARIOS), default=["master"], metavar="SCENARIO",
                   help="how Keystile is set up and called (see SCENARIOS in bench/scenarios.py); several: one Keystile "
                        f"each, all measured in the same alternation against the relay. One of {list(SCENARIOS)}")
    p.add_argument("--database-url", metavar="URL",
                   help="a Postgres server (postgresql://postgres@127.0.0.1:5432): each Keystile gets a fresh "
                        "database there, created with psql and dropped after. Default: SQLite in the temp dir")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                   help="REDIS_URL for scenarios that use Redis (default redis://127.0.0.1:6379/0)")
    p.add_argument("--relay-client", choices=["aiohttp", "keystile"], default="aiohttp",
                   help="the relay's upstream client: aiohttp (default, the targets' baseline) or Keystile's own "
                        "(backends/http.py), which shows Keystile's overhead without the difference of the clients")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="also measure the first scenario served by another checkout's code (e.g. `git archive main`"
                        " unpacked in DIR), as target 'baseline', in the same alternation: a change against main")
    p.add_argument("--direct", action="store_true", help="also measure the upstream called directly")
    p.add_argument("--pin", action="store_true",
                   help="pin the server under test to CPU 0 and upstream + wrk to the other CPUs")
    p.add_argument("--profile", action="store_true",
                   help="afterwards, py-spy the relay and Keystile under c=32 load; stacks go to bench/results/")
    p.add_argument("--native", action="store_true", help="with --profile: include C frames (py-spy --native)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes (default bench/results/)")
    args = p.parse_args(argv)
    args.scenario = list(dict.fromkeys(args.scenario))  # order kept, repeats dropped
    if args.database_url:
        pg_server(args.database_url)  # fail early on a non-Postgres URL
    return args


def redact(url: str | None) -> str | None:
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urllib.parse.urlunsplit(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    scenarios = [SCENARIOS[name] for name in args.scenario]
    # One scenario: its Keystile is the target "keystile", as it always was. Several: each is named after its scenario.
    single = len(scenarios) == 1
    target_of = {s.name: ("keystile" if single else s.name) for s in scenarios}
    ncpu = os.cpu_count() or 1
    server_cpus = wrk_cpus = None
    if args.pin and ncpu >= 2:
        server_cpus, wrk_cpus = {0}, set(range(1, ncpu))
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    servers: list[Server] = []
    databases: list[Database] = []
    with tempfile.TemporaryDirectory(prefix="keystile-bench-") as tmp:
        workdir = Path(tmp)
        try:
            upstream = start_upstream(workdir, wrk_cpus)
            servers.append(upstream)
            relay = start_relay(upstream.url, workdir, server_cpus, args.relay_client)
            servers.append(relay)
            wait_listening(upstream)
            wait_listening(relay)
            targets = [Target("relay", relay, {})]
            keystiles: dict[str, Keystile] = {}
            for scenario in scenarios:
                t0 = time.monotonic()
                # This checkout's code, also where the editable install is another one's (a git worktree).
                ks, target = start_scenario(scenario, target_of[scenario.name], upstream.url, workdir, server_cpus,
                                            args.database_url, args.redis_url, servers, databases, source=ROOT)
                keystiles[scenario.name] = ks
                targets.append(target)
                print(f"started Keystile for '{scenario.name}' on {ks.db.kind} in {time.monotonic() - t0:.1f}s"
                      f"{''.join(f'; {k} {v}' for k, v in ks.setup.items() if k != 'key_limits')}", flush=True)
            if args.baseline:
                _, target = start_scenario(scenarios[0], "baseline", upstream.url, workdir, server_cpus,
                                           args.database_url, args.redis_url, servers, databases,
                                           source=args.baseline.resolve())
                targets.append(target)
                print(f"started Keystile for '{scenarios[0].name}' from {args.baseline} as 'baseline'", flush=True)
            if args.direct:
                targets.append(Target("direct", upstream, {}))
            for t in targets:
                sanity_check(t.name, t.server.url, t.headers)
            checks: dict[str, dict] = {}
            for scenario in scenarios:
                if scenario.check:
                    t = next(t for t in targets if t.name == target_of[scenario.name])
                    checks[scenario.name] = {"before": scenario.check(keystiles[scenario.name], t.headers)}
                    print(f"check '{scenario.name}': {checks[scenario.name]['before']}", flush=True)

            cells_order = [(m, c) for m in args.modes for c in args.concurrency]
            per_measure = args.duration + args.warmup
            estimate = len(cells_order) * len(targets) * args.rounds * per_measure
            for scenario in scenarios:
                print(f"Keystile vs minimal relay — scenario '{scenario.name}' ({scenario.description})"
                      + ("" if single else f": target '{target_of[scenario.name]}'"))
            print(f"{ncpu} CPUs, load average {os.getloadavg()[0]:.2f}; {len(cells_order)} cells x {len(targets)} "
                  f"targets x {args.rounds} rounds x ({args.warmup:g}s warm-up + {args.duration:g}s): "
                  f"about {estimate / 60:.1f} min{'; pinned' if server_cpus else ''}", flush=True)

            width = max(9, *(len(t.name) for t in targets))
            runs: list[Run] = []
            for mode, c in cells_order:
                for rnd in range(args.rounds):
                    order = targets if rnd % 2 == 0 else targets[::-1]
                    for t in order:
                        cpus = wrk_cpus
                        if args.warmup > 0:
                            wrk(t.server.url, concurrency=c, seconds=args.warmup, body=BODIES[mode],
                                headers=t.headers, cpus=cpus)
                        run = measure(t, upstream, mode, c, rnd, args.duration, cpus)
                        runs.append(run)
                        print(f"  {mode:<6} c={c:<3} round {rnd + 1}  {t.name:<{width}} {run.rps:8.0f} req/s  "
                              f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  "
                              f"{run.target_cpu_us_per_req:5.0f} cpu-us/req"
                              f"{f' (+{run.aux_cpu_us_per_req:.0f} redis/db)' if t.aux else ''}"
                              f"{f'  ERRORS {run.errors}' if run.errors else ''}"
                              f"{f'  (other load {run.other_cpu_pct:.0f}% of a core)' if run.other_cpu_pct > 20 else ''}",
                              flush=True)

            for scenario in scenarios:  # still what it claims after the load?
                if scenario.check:
                    t = next(t for t in targets if t.name == target_of[scenario.name])
                    checks[scenario.name]["after"] = scenario.check(keystiles[scenario.name], t.headers)

            names = [t.name for t in targets]
            cells = summarize(runs, names, args.modes, args.concurrency)
            verdicts = evaluate(cells, target_of)
            print()
            print("Medians over rounds (req/s also min-max). cpu us/req: CPU time of the server under test per "
                  "request; other cpu%: load from outside this benchmark, % of one core.")
            print()
            print_table(cells, names)
            if not single:
                print_scenarios(cells, target_of)
            for v in verdicts:
                ratio = f"{v['ratio']:.2f}" if v["ratio"] is not None else "n/a"
                note = f"  ({v['note']})" if v.get("note") else ""
                print(f"{v['status']:<7} {v['target']}: {ratio}{note}")
            for name, seen in checks.items():
                print(f"check '{name}' after the load: {seen.get('after')}")
            noisy = [r for r in runs if r.other_cpu_pct > 20]
            if noisy:
                print(f"note: {len(noisy)} of {len(runs)} measurements ran while other processes used >20% of a core; "
                      "repeat the run if the figures matter")

            profiles = []
            if args.profile:
                print("\nprofiling under c=32 load with py-spy ...", flush=True)
                args.results.mkdir(parents=True, exist_ok=True)
                profiles = profile([t for t in targets if t.name != "direct"], upstream, args.duration, wrk_cpus,
                                   args.results, stamp, args.native)

            args.results.mkdir(parents=True, exist_ok=True)
            if args.relay_client != "aiohttp":
                print(f"note: the relay used the {args.relay_client} client; the targets are defined against the "
                      "aiohttp relay, so the verdicts above are for information only")
            out = args.results / f"relay_bench-{stamp}.json"
            settings = {"duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
                        "concurrency": args.concurrency, "modes": args.modes, "scenarios": args.scenario,
                        "database": "postgres" if args.database_url else "sqlite",
                        "database_url": redact(args.database_url), "redis_url": redact(args.redis_url),
                        "pinned": bool(server_cpus), "bodies": BODIES, "relay_client": args.relay_client,
                        "baseline": str(args.baseline) if args.baseline else None}
            if single:
                settings["scenario"] = scenarios[0].name
            out.write_text(json.dumps({
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                "elapsed_s": round(time.time() - started, 1),
                "commit": git_commit(),
                "machine": {"cpus": ncpu, "python": platform.python_version(), "platform": platform.platform(),
                            "loadavg_end": os.getloadavg()},
                "settings": settings,
                "scenarios": {s.name: {"target": target_of[s.name], "description": s.description,
                                       "setup": keystiles[s.name].setup, "checks": checks.get(s.name)}
                              for s in scenarios},
                "cells": cells, "targets": verdicts, "runs": [asdict(r) for r in runs],
                "profiles": [str(p) for p in profiles],
            }, indent=2))
            print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
            print(f"elapsed: {time.time() - started:.0f}s")
            return 0
        except Exception as exc:
            traceback.print_exc()
            report_failure("benchmark", exc, servers)
            return 1
        finally:
            stop_all(servers, databases)


if __name__ == "__main__":
    sys.exit(main())
