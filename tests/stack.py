"""The production stack for tests: scripts/stack.sh brings up nginx (HTTPS, the repository's
nginx/keystile.conf) -> two Keystile instances -> PostgreSQL + Redis -> the fake upstream.

The `stack` fixture (session-wide, registered in conftest.py) starts it once on free ports in a
temporary directory and stops it at the end. Clients reach it over HTTPS with the local CA; each
test that cares about per-address behaviour (nginx's limits, the failed-auth throttle) connects from
its own loopback address (127.0.0.x), which Linux routes like 127.0.0.1."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from .upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[1]
STACK_SH = ROOT / "scripts" / "stack.sh"


def require_tool(name: str, install: str) -> str:
    """The tool's path, or a skip naming what to install (a failure under CI=true: conftest.py)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({install}; `make test` installs it where it can)")
    return path


def _ports() -> tuple[int, int, int]:
    """Free ports for nginx's HTTPS and HTTP and a base p with p and p + 1 free for the instances,
    all distinct and held while choosing. They come from below the kernel's ephemeral range
    (32768 and up), where outgoing connections on a busy machine would take them between this
    choice and the servers binding them."""
    held: list[socket.socket] = []
    rng = random.Random()

    def grab(port: int) -> bool:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            return False
        held.append(s)
        return True

    try:
        chosen: list[int] = []
        for _ in range(1000):
            port = rng.randrange(20000, 32000)
            if len(chosen) < 2:
                if grab(port):
                    chosen.append(port)
            elif grab(port):
                if grab(port + 1):
                    return chosen[0], chosen[1], port
        raise RuntimeError("no free ports between 20000 and 32000")
    finally:
        for s in held:
            s.close()


def stack_config(upstream: FakeUpstream) -> dict:
    def entry(public: str, upstream_model: str) -> dict:
        return {"model_name": public, "litellm_params": {"model": f"openai/{upstream_model}",
                                                          "api_base": upstream.base_url, "api_key": "upstream-secret"}}
    # smollm2 is the name the docs use; here it is the fake upstream's echo, so recipes run quickly.
    return {"model_list": [entry("echo", "echo-upstream"), entry("smollm2", "echo-smollm2"),
                           entry("slow", "slowstream"), entry("failing", "fail")],
            "keystile_settings": {"auth_failures_per_minute": 3}}


class Stack:
    def __init__(self, tmp: Path, upstream: FakeUpstream, database_url: str, redis_url: str):
        self.dir = tmp / "stack"
        self.certs = tmp / "certs"
        self.ca = str(self.certs / "ca.crt")
        self.https_port, self.http_port, self.port_base = _ports()
        self.base = f"https://localhost:{self.https_port}"
        self.master_key = "sk-master-" + secrets.token_urlsafe(16)
        config = tmp / "stack-config.yaml"
        config.write_text(yaml.safe_dump(stack_config(upstream)))
        self.env = {**os.environ, "STACK_DIR": str(self.dir), "STACK_CERTS": str(self.certs),
                    "STACK_HTTPS_PORT": str(self.https_port), "STACK_HTTP_PORT": str(self.http_port),
                    "STACK_PORT_BASE": str(self.port_base), "STACK_INSTANCES": "2",
                    "KEYSTILE_CONFIG": str(config), "KEYSTILE_MASTER_KEY": self.master_key,
                    "DATABASE_URL": database_url, "REDIS_URL": redis_url,
                    "KEYSTILE_BIN": str(ROOT / ".venv" / "bin" / "keystile")}
        self.env.pop("KEYSTILE_TRUSTED_PROXIES", None)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(STACK_SH), *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        if check and done.returncode != 0:
            raise RuntimeError(f"stack.sh {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
                               f"\n{self.logs()}")
        return done

    def instance_pids(self) -> list[int]:
        return [int(p.read_text()) for p in self.dir.glob("keystile-*.pid") if p.read_text().strip().isdigit()]

    def down(self) -> None:
        """scripts/stack.sh down, then SIGKILL for any instance it left running (none should be)."""
        pids = self.instance_pids()
        done = self.run("down", check=False)
        left = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                left.append(pid)
            except ProcessLookupError:
                pass
        assert not left, f"stack.sh down left instances {left} running:\n{done.stdout}{done.stderr}"

    def instance_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.port_base + i - 1}"

    def pid(self, i: int) -> int:
        return int((self.dir / f"keystile-{i}.pid").read_text())

    def kill(self, i: int, sig: int = signal.SIGTERM) -> None:
        os.kill(self.pid(i), sig)

    def wait_gone(self, i: int, timeout: float = 40) -> None:
        pid, deadline = self.pid(i), time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise AssertionError(f"keystile-{i} (pid {pid}) did not exit")

    def access_log(self) -> list[str]:
        path = self.dir / "nginx-access.log"
        return path.read_text().splitlines() if path.exists() else []

    def logs(self) -> str:
        parts = []
        for name in ("keystile-1.log", "keystile-2.log", "nginx-error.log"):
            path = self.dir / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text()[-2000:]}")
        return "\n".join(parts)

    def client(self, source: str = "127.0.0.1", **kwargs) -> httpx.AsyncClient:
        """An HTTPS client of nginx that trusts the local CA, connecting from `source`."""
        transport = httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cafile=self.ca), local_address=source, retries=0,
                                             limits=httpx.Limits(max_connections=200))
        return httpx.AsyncClient(base_url=self.base, transport=transport, timeout=kwargs.pop("timeout", 30), **kwargs)

    async def key(self, **fields) -> str:
        async with self.client() as c:
            r = await c.post("/key/generate", json=fields, headers={"Authorization": f"Bearer {self.master_key}"})
        assert r.status_code == 200, r.text
        return r.json()["key"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory, upstream, pg_url, redis_url):
    require_tool("nginx", "apt-get install -y nginx")
    require_tool("openssl", "apt-get install -y openssl")
    s = Stack(tmp_path_factory.mktemp("stack"), upstream, pg_url, redis_url)
    try:
        s.run("up")
        yield s
    finally:
        s.down()
