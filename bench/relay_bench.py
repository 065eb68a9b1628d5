"""Keystile against a minimal relay, in one run, in front of the same fast local upstream.

Starts three processes — bench/fast_upstream.py, bench/minimal_relay.py, and Keystile the way users
start it (`keystile db upgrade`, `keystile serve --config ...`) — then drives each with wrk at
concurrency 1 and 32, non-streaming and streaming. Measurements alternate between the targets
(relay, keystile, keystile, relay, ...) after a warm-up each, so drift on a shared machine hits both
alike. Prints a table, the Keystile/relay ratios and the issue's targets (PASS/FAIL), and writes
the whole run as JSON to bench/results/. Exit status is 0 whatever the figures: this is a report,
not a test; it is non-zero only when something broke (a server did not start, a sanity request
failed, wrk is missing).

    .venv/bin/python bench/relay_bench.py [--duration 8] [--rounds 2] [--scenario master] [--profile]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from profiling import profile_summary
from report import evaluate, print_table, summarize

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent  # run with .venv/bin/python: keystile sits beside it
LUA = BENCH / "post.lua"
RESULTS = BENCH / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")

MODEL = "bench"
MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
BODIES = {
    "json": {"model": MODEL, "messages": MESSAGES, "max_tokens": 16},
    "stream": {"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "stream": True,
               "stream_options": {"include_usage": True}},
}
WRK_THREADS = {1: 1}  # concurrency -> wrk threads; anything else gets 2


# --------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def affinity(cpus: set[int] | None) -> Callable[[], None] | None:
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def spawn(name: str, argv: list[str], *, port: int, log_dir: Path, env: dict | None = None,
          cwd: Path | None = None, cpus: set[int] | None = None) -> Server:
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(argv, env=env or os.environ.copy(), cwd=cwd or ROOT, stdout=log,
                            stderr=subprocess.STDOUT, preexec_fn=affinity(cpus))
    log.close()
    return Server(name, f"http://127.0.0.1:{port}", proc, log_path)


def wait_listening(server: Server, timeout: float = 60.0) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not listen on {server.url} within {timeout}s:\n{tail(server.log_path)}")


def request(url: str, path: str, body: dict, headers: dict[str, str]) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def sanity_check(name: str, url: str, headers: dict[str, str]) -> None:
    """One JSON and one streamed request must answer like the upstream does, or nothing is measured."""
    status, data = request(url, "/v1/chat/completions", BODIES["json"], headers)
    if status != 200:
        raise RuntimeError(f"{name}: JSON request answered {status}: {data[:500]!r}")
    parsed = json.loads(data)
    if not parsed.get("choices") or not parsed.get("usage"):
        raise RuntimeError(f"{name}: JSON answer lacks choices/usage: {data[:500]!r}")
    status, data = request(url, "/v1/chat/completions", BODIES["stream"], headers)
    if status != 200:
        raise RuntimeError(f"{name}: stream request answered {status}: {data[:500]!r}")
    events = [line[5:].strip() for line in data.split(b"\n") if line.startswith(b"data:")]
    content = [e for e in events if b'"content"' in e]
    if events[-1:] != [b"[DONE]"] or len(content) < 5:
        raise RuntimeError(f"{name}: stream answer is not 5+ content events ending in [DONE]: {data[:800]!r}")


# --------------------------------------------------------------------------- Keystile and scenarios

@dataclass
class Keystile:
    server: Server
    master_key: str
    workdir: Path
    env: dict


@dataclass(frozen=True)
class Scenario:
    """How Keystile is set up for a run: extra config.yaml content, and what a client sends.

    `prepare` runs once Keystile serves and returns the request headers for the load (e.g. it can
    create a virtual key through the admin API and return it as Bearer)."""

    name: str
    description: str
    prepare: Callable[[Keystile], dict[str, str]]
    keystile_settings: dict = field(default_factory=dict)


def _master(ks: Keystile) -> dict[str, str]:
    return {"Authorization": f"Bearer {ks.master_key}"}


def _virtual(ks: Keystile) -> dict[str, str]:
    status, data = request(ks.server.url, "/key/generate", {"key_alias": "bench", "models": [MODEL]}, _master(ks))
    if status != 200:
        raise RuntimeError(f"POST /key/generate answered {status}: {data[:500]!r}")
    return {"Authorization": f"Bearer {json.loads(data)['key']}"}


SCENARIOS: dict[str, Scenario] = {
    "master": Scenario("master", "the master key as Bearer", _master),
    "virtual": Scenario("virtual", "a virtual key from POST /key/generate (no limits set), from the key cache",
                        _virtual),
    # Add more here: a key with rpm/tpm limits or a budget, Redis counters, JWTs, ...
}


def keystile_config(upstream_url: str, scenario: Scenario) -> dict:
    config: dict = {"model_list": [{"model_name": MODEL, "litellm_params": {
        "model": "openai/bench-upstream", "api_base": f"{upstream_url}/v1"}}]}
    if scenario.keystile_settings:
        config["keystile_settings"] = dict(scenario.keystile_settings)
    return config


def start_keystile(upstream_url: str, scenario: Scenario, workdir: Path, cpus: set[int] | None) -> Keystile:
    keystile = BIN / "keystile"
    if not keystile.exists():
        found = shutil.which("keystile")
        if not found:
            raise RuntimeError(f"no keystile executable beside {sys.executable}: run with .venv/bin/python")
        keystile = Path(found)
    config_path = workdir / "config.yaml"
    config_path.write_text(json.dumps(keystile_config(upstream_url, scenario), indent=2))  # JSON is YAML
    master_key = "sk-master-bench-" + os.urandom(16).hex()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KEYSTILE_CONFIG")}
    env.update(KEYSTILE_MASTER_KEY=master_key, DATABASE_URL=f"sqlite+aiosqlite:///{workdir}/keystile.db")
    migrate = subprocess.run([str(keystile), "db", "upgrade"], env=env, cwd=workdir, capture_output=True, text=True)
    if migrate.returncode != 0:
        raise RuntimeError(f"keystile db upgrade failed:\n{migrate.stdout}{migrate.stderr}")
    port = free_port()
    server = spawn("keystile", [str(keystile), "serve", "--config", str(config_path), "--port", str(port)],
                   port=port, log_dir=workdir, env=env, cwd=workdir, cpus=cpus)
    deadline = time.monotonic() + 120
    while True:
        server.check_alive()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health/liveliness")
            if conn.getresponse().status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"keystile did not come up:\n{tail(server.log_path)}")
        time.sleep(0.1)
    return Keystile(server, master_key, workdir, env)


# --------------------------------------------------------------------------- load

@dataclass
class Target:
    name: str
    server: Server
    headers: dict[str, str]


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
    other_cpu_pct: float  # CPU used by processes outside this benchmark, % of one core, on average
    wrk: dict


def wrk(url: str, *, concurrency: int, seconds: float, body: dict, headers: dict[str, str],
        cpus: set[int] | None) -> dict:
    threads = WRK_THREADS.get(concurrency, 2)
    env = {**os.environ, "BENCH_BODY": json.dumps(body, separators=(",", ":")),
           "BENCH_AUTH": headers.get("Authorization", "")}
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
    t0, u0, s0 = cpu_seconds(target.server.pid), cpu_seconds(upstream.pid), system_process_seconds()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.monotonic()
    result = wrk(target.server.url, concurrency=concurrency, seconds=seconds, body=BODIES[mode],
                 headers=target.headers, cpus=wrk_cpus)
    wall = time.monotonic() - wall0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t1, u1, s1 = cpu_seconds(target.server.pid), cpu_seconds(upstream.pid), system_process_seconds()
    wrk_cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    own_cpu = (t1 - t0) + (u1 - u0) + wrk_cpu
    n = max(1, result["requests"])
    errors = sum(result["errors"].values())
    lat = result["latency_us"]
    return Run(
        target=target.name, mode=mode, concurrency=concurrency, round=rnd,
        rps=result["requests"] / (result["duration_us"] / 1e6), p50_ms=lat["p50"] / 1e3, p90_ms=lat["p90"] / 1e3,
        p99_ms=lat["p99"] / 1e3, mean_ms=lat["mean"] / 1e3, requests=result["requests"], errors=errors,
        target_cpu_us_per_req=(t1 - t0) / n * 1e6, upstream_cpu_us_per_req=(u1 - u0) / n * 1e6,
        other_cpu_pct=max(0.0, (s1 - s0) - own_cpu) / wall * 100, wrk=result,
    )


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "proxy", "backends"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except OSError:
        return None


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Keystile vs a minimal aiohttp relay, same fast upstream, one run.")
    p.add_argument("--duration", type=float, default=8, help="seconds per measurement (default 8)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load before each measurement")
    p.add_argument("--rounds", type=int, default=2,
                   help="measurements per target and cell, alternated relay/keystile (default 2)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--modes", nargs="+", choices=list(BODIES), default=list(BODIES))
    p.add_argument("--scenario", choices=list(SCENARIOS), default="master",
                   help="how Keystile is set up and called (see SCENARIOS in this file)")
    p.add_argument("--direct", action="store_true", help="also measure the upstream called directly")
    p.add_argument("--pin", action="store_true",
                   help="pin the server under test to CPU 0 and upstream + wrk to the other CPUs")
    p.add_argument("--profile", action="store_true",
                   help="afterwards, py-spy the relay and Keystile under c=32 load; stacks go to bench/results/")
    p.add_argument("--native", action="store_true", help="with --profile: include C frames (py-spy --native)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes (default bench/results/)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    scenario = SCENARIOS[args.scenario]
    ncpu = os.cpu_count() or 1
    server_cpus = wrk_cpus = None
    if args.pin and ncpu >= 2:
        server_cpus, wrk_cpus = {0}, set(range(1, ncpu))
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="keystile-bench-") as tmp:
        workdir = Path(tmp)
        try:
            up_port = free_port()
            upstream = spawn("upstream", [sys.executable, str(BENCH / "fast_upstream.py"), "--port", str(up_port)],
                             port=up_port, log_dir=workdir, cpus=wrk_cpus)
            servers.append(upstream)
            relay_port = free_port()
            relay = spawn("relay", [sys.executable, str(BENCH / "minimal_relay.py"), "--port", str(relay_port),
                                    "--upstream", upstream.url], port=relay_port, log_dir=workdir, cpus=server_cpus)
            servers.append(relay)
            wait_listening(upstream)
            wait_listening(relay)
            ks = start_keystile(upstream.url, scenario, workdir, server_cpus)
            servers.append(ks.server)
            targets = [Target("relay", relay, {}), Target("keystile", ks.server, scenario.prepare(ks))]
            if args.direct:
                targets.append(Target("direct", upstream, {}))
            for t in targets:
                sanity_check(t.name, t.server.url, t.headers)

            cells_order = [(m, c) for m in args.modes for c in args.concurrency]
            per_measure = args.duration + args.warmup
            estimate = len(cells_order) * len(targets) * args.rounds * per_measure
            print(f"Keystile vs minimal relay — scenario '{scenario.name}' ({scenario.description})")
            print(f"{ncpu} CPUs, load average {os.getloadavg()[0]:.2f}; {len(cells_order)} cells x {len(targets)} "
                  f"targets x {args.rounds} rounds x ({args.warmup:g}s warm-up + {args.duration:g}s): "
                  f"about {estimate / 60:.1f} min{'; pinned' if server_cpus else ''}", flush=True)

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
                        print(f"  {mode:<6} c={c:<3} round {rnd + 1}  {t.name:<9} {run.rps:8.0f} req/s  "
                              f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  "
                              f"{run.target_cpu_us_per_req:5.0f} cpu-us/req"
                              f"{f'  ERRORS {run.errors}' if run.errors else ''}"
                              f"{f'  (other load {run.other_cpu_pct:.0f}% of a core)' if run.other_cpu_pct > 20 else ''}",
                              flush=True)

            names = [t.name for t in targets]
            cells = summarize(runs, names, args.modes, args.concurrency)
            verdicts = evaluate(cells)
            print()
            print("Medians over rounds (req/s also min-max). cpu us/req: CPU time of the server under test per "
                  "request; other cpu%: load from outside this benchmark, % of one core.")
            print()
            print_table(cells, names)
            for v in verdicts:
                ratio = f"{v['ratio']:.2f}" if v["ratio"] is not None else "n/a"
                state = "PASS" if v["pass"] else ("FAIL" if v["valid"] else "INVALID (errors or missing)")
                print(f"{state:<5} {v['target']}: {ratio}")
            noisy = [r for r in runs if r.other_cpu_pct > 20]
            if noisy:
                print(f"note: {len(noisy)} of {len(runs)} measurements ran while other processes used >20% of a core; "
                      "repeat the run if the figures matter")

            profiles = []
            if args.profile:
                print("\nprofiling under c=32 load with py-spy ...", flush=True)
                args.results.mkdir(parents=True, exist_ok=True)
                profiles = profile(targets[:2], upstream, args.duration, wrk_cpus, args.results, stamp,
                                            args.native)

            args.results.mkdir(parents=True, exist_ok=True)
            out = args.results / f"relay_bench-{stamp}.json"
            out.write_text(json.dumps({
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                "elapsed_s": round(time.time() - started, 1),
                "commit": git_commit(),
                "machine": {"cpus": ncpu, "python": platform.python_version(), "platform": platform.platform(),
                            "loadavg_end": os.getloadavg()},
                "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
                             "concurrency": args.concurrency, "modes": args.modes, "scenario": scenario.name,
                             "pinned": bool(server_cpus), "bodies": BODIES},
                "cells": cells, "targets": verdicts, "runs": [asdict(r) for r in runs],
                "profiles": [str(p) for p in profiles],
            }, indent=2))
            print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
            return 0
        except Exception as exc:
            traceback.print_exc()
            print(f"benchmark failed: {exc}", file=sys.stderr)
            for s in servers:
                if s.proc.poll() is not None:
                    print(f"--- {s.name} log ---\n{tail(s.log_path)}", file=sys.stderr)
            return 1
        finally:
            for s in reversed(servers):
                s.stop()


if __name__ == "__main__":
    sys.exit(main())
