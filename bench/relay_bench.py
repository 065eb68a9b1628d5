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
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from profiling import profile_summary
from report import evaluate, print_scenarios, print_table, summarize

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


def cpu_seconds_or_0(pid: int) -> float:
    """cpu_seconds of a process that may be gone, or not ours to read."""
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return 0.0


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


def post(url: str, path: str, body: dict, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """POST JSON; the status, the response headers (names lower-cased) and the body."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get(url: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def request(url: str, path: str, body: dict, headers: dict[str, str]) -> tuple[int, bytes]:
    status, _, data = post(url, path, body, headers)
    return status, data


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


# --------------------------------------------------------------------------- databases

@dataclass
class Database:
    """The database one Keystile runs on: SQLite in its temp dir, or a fresh Postgres database
    (created with psql for the run and dropped after)."""

    url: str  # DATABASE_URL as Keystile takes it
    kind: str  # "sqlite" | "postgres"
    sqlite_path: Path | None = None
    pg: dict | None = None  # psql connection settings and the database name

    def drop(self) -> None:
        if self.pg:
            psql(self.pg, f'DROP DATABASE IF EXISTS "{self.pg["dbname"]}" WITH (FORCE)', check=False)


def pg_server(url: str) -> dict:
    """psql settings from --database-url (postgresql://user[:password]@host[:port][/maintenance-db])."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise SystemExit(f"--database-url must be a Postgres URL (postgresql://user@host:port), not {url!r}")
    return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 5432,
            "user": urllib.parse.unquote(parts.username or "postgres"),
            "password": urllib.parse.unquote(parts.password) if parts.password else None,
            "maintenance_db": parts.path.lstrip("/") or "postgres"}


def psql(pg: dict, sql: str, *, db: str | None = None, stdin: str | None = None, check: bool = True) -> str:
    if not shutil.which("psql"):
        raise RuntimeError("psql is not installed (apt-get install -y postgresql-client)")
    env = {**os.environ, **({"PGPASSWORD": pg["password"]} if pg.get("password") else {})}
    argv = ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", pg["host"], "-p", str(pg["port"]),
            "-U", pg["user"], "-d", db or pg["maintenance_db"], "-c", sql]
    out = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"psql {sql[:80]!r} failed:\n{out.stderr}")
    return out.stdout.strip()


def make_database(server_url: str | None, name: str, workdir: Path) -> Database:
    if not server_url:
        path = workdir / "keystile.db"
        return Database(f"sqlite+aiosqlite:///{path}", "sqlite", sqlite_path=path)
    pg = pg_server(server_url)
    pg["dbname"] = f"keystile_bench_{os.getpid()}_{name}".replace("-", "_").lower()
    psql(pg, f'DROP DATABASE IF EXISTS "{pg["dbname"]}" WITH (FORCE)')
    psql(pg, f'CREATE DATABASE "{pg["dbname"]}"')
    auth = urllib.parse.quote(pg["user"]) + (":" + urllib.parse.quote(pg["password"]) if pg["password"] else "")
    return Database(f"postgresql+asyncpg://{auth}@{pg['host']}:{pg['port']}/{pg['dbname']}", "postgres", pg=pg)


SEED_COLUMNS = ("id", "token_hash", "key_prefix", "key_type", "models", "aliases", "model_rpm_limit",
                "model_tpm_limit", "metadata", "spend", "blocked", "created_at", "updated_at")


def seed_keys(db: Database, n: int) -> dict:
    """Insert n virtual keys straight into the `keys` table (after `keystile db upgrade`), in one bulk
    statement: the rows /key/generate would write (proxy/db/models.py Key, proxy/auth/secrets.py),
    with secrets nobody keeps. SQLite: executemany in one transaction; Postgres: COPY through psql."""
    t0 = time.monotonic()
    now = datetime.now(UTC)
    rows = []
    for _ in range(n):
        secret = "sk-" + secrets.token_urlsafe(32)
        rows.append((str(uuid.uuid4()), hashlib.sha256(secret.encode()).hexdigest(), f"sk-...{secret[-4:]}"))
    if db.kind == "sqlite":
        # SQLAlchemy's SQLite types: DateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC, naive), JSON as text, bool 0/1
        stamp = now.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        conn = sqlite3.connect(db.sqlite_path)
        try:
            with conn:
                conn.executemany(
                    f"INSERT INTO keys ({', '.join(SEED_COLUMNS)}) "
                    "VALUES (?, ?, ?, 'default', '[]', '{}', '{}', '{}', '{}', 0.0, 0, ?, ?)",
                    [(*r, stamp, stamp) for r in rows])
            count = conn.execute("SELECT count(*) FROM keys").fetchone()[0]
        finally:
            conn.close()
    else:
        stamp = now.isoformat()
        csv = "".join(f"{i},{h},{p},default,[],{{}},{{}},{{}},{{}},0,false,{stamp},{stamp}\n" for i, h, p in rows)
        psql(db.pg, f"COPY keys ({', '.join(SEED_COLUMNS)}) FROM STDIN WITH (FORMAT csv)", db=db.pg["dbname"],
             stdin=csv)
        psql(db.pg, "ANALYZE keys", db=db.pg["dbname"])
        count = int(psql(db.pg, "SELECT count(*) FROM keys", db=db.pg["dbname"]))
    if count < n:
        raise RuntimeError(f"seeding keys: {count} rows in keys after inserting {n}")
    return {"keys_seeded": n, "keys_in_db": count, "seed_s": round(time.monotonic() - t0, 2)}


def redis_server_pids(redis_url: str) -> list[int]:
    """The Redis server's pid, when it runs on this machine (its /proc entry readable)."""
    import redis  # Keystile's own dependency

    client = redis.Redis.from_url(redis_url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return [pid] if os.path.exists(f"/proc/{pid}/stat") and cpu_seconds_or_0(pid) > 0 else []


def pg_backend_pids(db: Database) -> list[int]:
    """The Postgres backends connected to this Keystile's database, when Postgres runs on this machine."""
    if not db.pg:
        return []
    out = psql(db.pg, f"SELECT pid FROM pg_stat_activity WHERE datname = '{db.pg['dbname']}' "
                      "AND pid <> pg_backend_pid()", check=False)
    return [int(p) for p in out.split() if p.isdigit() and os.path.exists(f"/proc/{p}/stat")]


# --------------------------------------------------------------------------- Keystile and scenarios

@dataclass
class Keystile:
    server: Server
    master_key: str
    workdir: Path
    env: dict
    db: Database
    setup: dict = field(default_factory=dict)  # what seeding and prepare did, for the results


@dataclass(frozen=True)
class Scenario:
    """How Keystile is set up for a run: extra config.yaml content, and what a client sends.

    `seed(db)` runs after `keystile db upgrade` and before Keystile starts (fill the database; returns
    figures for the results). `prepare` runs once Keystile serves and returns the request headers for
    the load (e.g. it can create a virtual key through the admin API and return it as Bearer).
    `check(keystile, headers)` runs before and after the measurements and raises if the scenario is not
    what it claims (a header missing, Redis not counting); it returns what it saw, for the results.
    `redis`: start Keystile with REDIS_URL (--redis-url)."""

    name: str
    description: str
    prepare: Callable[[Keystile], dict[str, str]]
    keystile_settings: dict = field(default_factory=dict)
    seed: Callable[[Database], dict] | None = None
    check: Callable[[Keystile, dict[str, str]], dict] | None = None
    redis: bool = False


def _master(ks: Keystile) -> dict[str, str]:
    return {"Authorization": f"Bearer {ks.master_key}"}


def generate_key(ks: Keystile, fields: dict) -> str:
    status, data = request(ks.server.url, "/key/generate", fields, _master(ks))
    if status != 200:
        raise RuntimeError(f"POST /key/generate answered {status}: {data[:500]!r}")
    return json.loads(data)["key"]


def _virtual(ks: Keystile) -> dict[str, str]:
    return {"Authorization": f"Bearer {generate_key(ks, {'key_alias': 'bench', 'models': [MODEL]})}"}


# High enough never to refuse during a run, but present: every request is counted against them.
# (tpm stays below 2^31: the column is a 32-bit integer on Postgres.)
KEY_LIMITS = {"rpm_limit": 100_000_000, "tpm_limit": 2_000_000_000, "max_parallel_requests": 10_000}
SEED_KEYS = 100_000


def _limited(ks: Keystile) -> dict[str, str]:
    key = generate_key(ks, {"key_alias": "bench-limited", "models": [MODEL], **KEY_LIMITS})
    ks.setup["key_limits"] = KEY_LIMITS
    return {"Authorization": f"Bearer {key}"}


def _check_limit_headers(ks: Keystile, headers: dict[str, str]) -> dict:
    """A JSON request answers 200 with OpenAI's x-ratelimit-* headers (the key's limits were applied)."""
    status, resp_headers, data = post(ks.server.url, "/v1/chat/completions", BODIES["json"], headers)
    if status != 200:
        raise RuntimeError(f"limits check: JSON request answered {status}: {data[:300]!r}")
    want = ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens")
    missing = [h for h in want if h not in resp_headers]
    if missing:
        raise RuntimeError(f"limits check: the answer lacks {missing}; headers: {resp_headers}")
    return {h: resp_headers[h] for h in resp_headers if h.startswith("x-ratelimit-")}


def _check_redis_limits(ks: Keystile, headers: dict[str, str]) -> dict:
    """As _check_limit_headers, and the request was counted in Redis: the key's rate hash there
    (keystile:rate:key:<hash>, proxy/limits/lua.py) holds rpm - x-ratelimit-remaining-requests requests.
    Without this the Redis limiter could be serving from its in-process fallback unnoticed."""
    import redis  # Keystile's own dependency

    token_hash = hashlib.sha256(headers["Authorization"].removeprefix("Bearer ").encode()).hexdigest()
    client = redis.Redis.from_url(ks.env["REDIS_URL"])
    try:
        for _ in range(3):  # a window rollover between the answer and the read: try again
            seen = _check_limit_headers(ks, headers)
            w, req = client.hmget(f"keystile:rate:key:{token_hash}", "w", "req")
            counted = KEY_LIMITS["rpm_limit"] - int(seen["x-ratelimit-remaining-requests"])
            if req is not None and int(req) == counted:
                return {**seen, "redis_rate_hash": {"w": int(w), "req": int(req)}}
        raise RuntimeError(f"redis check: keystile:rate:key:{token_hash[:12]}… holds req={req!r}, the answer says "
                           f"{counted} requests were counted: the limiter is not counting in Redis")
    finally:
        client.close()


def _check_seeded(ks: Keystile, headers: dict[str, str]) -> dict:
    """The seeded rows are in the database and read back through Keystile like a generated key:
    GET /key/list counts SEED_KEYS + 1 keys, and a seeded key's fields match the generated one's."""
    status, data = get(ks.server.url, "/key/list?page=1&size=5&return_full_object=true", _master(ks))
    if status != 200:
        raise RuntimeError(f"seed check: GET /key/list answered {status}: {data[:300]!r}")
    listed = json.loads(data)
    if listed["total_count"] != SEED_KEYS + 1:
        raise RuntimeError(f"seed check: /key/list counts {listed['total_count']} keys, expected {SEED_KEYS + 1}")
    mine = hashlib.sha256(headers["Authorization"].removeprefix("Bearer ").encode()).hexdigest()
    generated = next((k for k in listed["keys"] if k["token"] == mine), None)
    seeded = next((k for k in listed["keys"] if k["token"] != mine), None)
    if generated is None or seeded is None:
        raise RuntimeError(f"seed check: expected the generated key and seeded ones first in /key/list: {listed}")
    if seeded["models"] != []:
        raise RuntimeError(f"seed check: a seeded key has models {seeded['models']!r}, not []")
    same = ("aliases", "model_rpm_limit", "model_tpm_limit", "metadata", "spend", "blocked", "key_type")
    differ = {f: (seeded.get(f), generated.get(f)) for f in same if seeded.get(f) != generated.get(f)}
    if set(seeded) != set(generated) or differ or not seeded["key_name"].startswith("sk-..."):
        raise RuntimeError(f"seed check: a seeded key does not read back like a generated one: {differ}; "
                           f"{sorted(set(seeded) ^ set(generated))}")
    return {"keys_listed": listed["total_count"]}


SCENARIOS: dict[str, Scenario] = {
    "master": Scenario("master", "the master key as Bearer", _master),
    "virtual": Scenario("virtual", "a virtual key from POST /key/generate (no limits set), from the key cache",
                        _virtual),
    "keys100k": Scenario("keys100k", f"{SEED_KEYS:,} keys bulk-inserted before start, the load with one more "
                         "virtual key from POST /key/generate (no limits)", _virtual,
                         seed=lambda db: seed_keys(db, SEED_KEYS), check=_check_seeded),
    "local-limits": Scenario("local-limits", "a virtual key with rpm, tpm and parallel limits (never reached), "
                             "counted in process (no REDIS_URL)", _limited, check=_check_limit_headers),
    "redis-limits": Scenario("redis-limits", "a virtual key with rpm, tpm and parallel limits (never reached), "
                             "counted in Redis (REDIS_URL)", _limited, check=_check_redis_limits, redis=True),
    # Add more here: budgets, JWTs, ...
}


def keystile_config(upstream_url: str, scenario: Scenario) -> dict:
    config: dict = {"model_list": [{"model_name": MODEL, "litellm_params": {
        "model": "openai/bench-upstream", "api_base": f"{upstream_url}/v1"}}]}
    if scenario.keystile_settings:
        config["keystile_settings"] = dict(scenario.keystile_settings)
    return config


def start_keystile(upstream_url: str, scenario: Scenario, workdir: Path, cpus: set[int] | None, db: Database,
                   redis_url: str, servers: list[Server]) -> Keystile:
    """`keystile db upgrade`, the scenario's seed, `keystile serve`; the server is appended to `servers`
    as soon as it is spawned, so it is stopped whatever happens next."""
    keystile = BIN / "keystile"
    if not keystile.exists():
        found = shutil.which("keystile")
        if not found:
            raise RuntimeError(f"no keystile executable beside {sys.executable}: run with .venv/bin/python")
        keystile = Path(found)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(json.dumps(keystile_config(upstream_url, scenario), indent=2))  # JSON is YAML
    master_key = "sk-master-bench-" + os.urandom(16).hex()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KEYSTILE_CONFIG")}
    env.update(KEYSTILE_MASTER_KEY=master_key, DATABASE_URL=db.url)
    if scenario.redis:
        env["REDIS_URL"] = redis_url
    migrate = subprocess.run([str(keystile), "db", "upgrade"], env=env, cwd=workdir, capture_output=True, text=True)
    if migrate.returncode != 0:
        raise RuntimeError(f"keystile db upgrade failed:\n{migrate.stdout}{migrate.stderr}")
    setup = scenario.seed(db) if scenario.seed else {}
    port = free_port()
    server = spawn(f"keystile-{scenario.name}", [str(keystile), "serve", "--config", str(config_path),
                                                 "--port", str(port)],
                   port=port, log_dir=workdir, env=env, cwd=workdir, cpus=cpus)
    servers.append(server)
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
            raise RuntimeError(f"keystile ({scenario.name}) did not come up:\n{tail(server.log_path)}")
        time.sleep(0.1)
    return Keystile(server, master_key, workdir, env, db, setup)


# --------------------------------------------------------------------------- load

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
    p.add_argument("--scenario", nargs="+", choices=list(SCENARIOS), default=["master"], metavar="SCENARIO",
                   help="how Keystile is set up and called (see SCENARIOS in this file); several: one Keystile "
                        f"each, all measured in the same alternation against the relay. One of {list(SCENARIOS)}")
    p.add_argument("--database-url", metavar="URL",
                   help="a Postgres server (postgresql://postgres@127.0.0.1:5432): each Keystile gets a fresh "
                        "database there, created with psql and dropped after. Default: SQLite in the temp dir")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                   help="REDIS_URL for scenarios that use Redis (default redis://127.0.0.1:6379/0)")
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
            targets = [Target("relay", relay, {})]
            keystiles: dict[str, Keystile] = {}
            for scenario in scenarios:
                t0 = time.monotonic()
                ks_dir = workdir / scenario.name
                ks_dir.mkdir()
                db = make_database(args.database_url, scenario.name, ks_dir)
                databases.append(db)
                ks = start_keystile(upstream.url, scenario, ks_dir, server_cpus, db, args.redis_url, servers)
                keystiles[scenario.name] = ks
                headers = scenario.prepare(ks)
                redis_pids = redis_server_pids(args.redis_url) if scenario.redis else []
                aux = (lambda db=db, fixed=redis_pids: fixed + pg_backend_pids(db)) \
                    if redis_pids or db.pg else None
                targets.append(Target(target_of[scenario.name], ks.server, headers, aux))
                print(f"started Keystile for '{scenario.name}' on {db.kind} in {time.monotonic() - t0:.1f}s"
                      f"{''.join(f'; {k} {v}' for k, v in ks.setup.items() if k != 'key_limits')}", flush=True)
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
            out = args.results / f"relay_bench-{stamp}.json"
            settings = {"duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
                        "concurrency": args.concurrency, "modes": args.modes, "scenarios": args.scenario,
                        "database": "postgres" if args.database_url else "sqlite",
                        "database_url": redact(args.database_url), "redis_url": redact(args.redis_url),
                        "pinned": bool(server_cpus), "bodies": BODIES}
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
            print(f"benchmark failed: {exc}", file=sys.stderr)
            for s in servers:
                if s.proc.poll() is not None:
                    print(f"--- {s.name} log ---\n{tail(s.log_path)}", file=sys.stderr)
            return 1
        finally:
            for s in reversed(servers):
                s.stop()
            for db in databases:
                db.drop()


if __name__ == "__main__":
    sys.exit(main())
