"""Starting a Keystile per scenario for bench/relay_bench.py, the way users start it: its own
database, a config.yaml pointing model `bench` at the fast upstream, `keystile db upgrade`, the
scenario's seed, `keystile serve`, then the scenario's prepare (the headers for the load)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from client import MODEL
from databases import Database, make_database, pg_backend_pids, redis_server_pids
from load import Target
from processes import BIN, Server, free_port, spawn, tail

if TYPE_CHECKING:
    from scenarios import Scenario


@dataclass
class Keystile:
    server: Server
    master_key: str
    workdir: Path
    env: dict
    db: Database
    setup: dict = field(default_factory=dict)  # what seeding and prepare did, for the results



def keystile_config(upstream_url: str, scenario: Scenario) -> dict:
    config: dict = {"model_list": [{"model_name": MODEL, "litellm_params": {
        "model": "openai/bench-upstream", "api_base": f"{upstream_url}/v1"}}]}
    if scenario.keystile_settings:
        config["keystile_settings"] = dict(scenario.keystile_settings)
    return config


def start_keystile(upstream_url: str, scenario: Scenario, workdir: Path, cpus: set[int] | None, db: Database,
                   redis_url: str, servers: list[Server], source: Path | None = None, name: str = "") -> Keystile:
    """`keystile db upgrade`, the scenario's seed, `keystile serve`; the server is appended to `servers`
    as soon as it is spawned, so it is stopped whatever happens next. `source`: a checkout whose
    proxy/ and backends/ serve instead of this one's (on PYTHONPATH, ahead of the editable install)."""
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
    if source is not None:
        env["PYTHONPATH"] = str(source)
    migrate = subprocess.run([str(keystile), "db", "upgrade"], env=env, cwd=workdir, capture_output=True, text=True)
    if migrate.returncode != 0:
        raise RuntimeError(f"keystile db upgrade failed:\n{migrate.stdout}{migrate.stderr}")
    setup = scenario.seed(db) if scenario.seed else {}
    port = free_port()
    server = spawn(f"keystile-{name or scenario.name}", [str(keystile), "serve", "--config", str(config_path),
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
            raise RuntimeError(f"keystile ({name or scenario.name}) did not come up:\n{tail(server.log_path)}")
        time.sleep(0.1)
    return Keystile(server, master_key, workdir, env, db, setup)


def start_scenario(scenario: Scenario, target_name: str, upstream_url: str, workdir: Path, cpus: set[int] | None,
                   database_url: str | None, redis_url: str, servers: list[Server],
                   databases: list[Database], source: Path | None = None) -> tuple[Keystile, Target]:
    """The scenario's Keystile, ready for the load: its own directory and database (appended to
    `databases` as soon as made, so it is dropped whatever happens next), started (start_keystile),
    prepared, and the target for it, with the Redis server and Postgres backends whose CPU is its own."""
    ks_dir = workdir / target_name
    ks_dir.mkdir()
    db = make_database(database_url, target_name, ks_dir)
    databases.append(db)
    ks = start_keystile(upstream_url, scenario, ks_dir, cpus, db, redis_url, servers, source, target_name)
    headers = scenario.prepare(ks)
    redis_pids = redis_server_pids(redis_url) if scenario.redis else []
    aux = (lambda db=db, fixed=redis_pids: fixed + pg_backend_pids(db)) \
        if redis_pids or db.pg else None
    return ks, Target(target_name, ks.server, headers, aux)


def report_failure(what: str, exc: Exception, servers: list[Server]) -> None:
    """A run broke: say so, with the log of every server that has exited."""
    print(f"{what} failed: {exc}", file=sys.stderr)
    for s in servers:
        if s.proc.poll() is not None:
            print(f"--- {s.name} log ---\n{tail(s.log_path)}", file=sys.stderr)


def stop_all(servers: list[Server], databases: list[Database]) -> None:
    """The run's servers, last started first, then its databases dropped."""
    for s in reversed(servers):
        s.stop()
    for db in databases:
        db.drop()
