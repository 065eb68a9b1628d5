"""Starting a real Keystile server (the `keystile serve` command) on a free port for tests."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from .upstream import free_port

BIN = Path(sys.executable).parent


class Keystile:
    def __init__(self, tmp: Path, config: dict, *, env: dict | None = None, wait_ready: bool = False,
                 database_url: str | None = None, args: tuple[str, ...] = (), serve: list[str] | None = None):
        """`serve`: the command that serves (given --config, --port and `args` after it);
        `keystile serve` by default."""
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.master_key = "sk-master-" + secrets.token_urlsafe(16)
        self.config_path = tmp / f"config-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / f"keystile-{self.port}.log"
        self.env = {**os.environ, "KEYSTILE_MASTER_KEY": self.master_key,
                    "DATABASE_URL": database_url or f"sqlite+aiosqlite:///{tmp}/keystile-{self.port}.db",
                    **(env or {})}
        if "REDIS_URL" not in (env or {}):
            self.env.pop("REDIS_URL", None)
        self.wait_ready = wait_ready
        self.args = args
        self.serve = serve or [str(BIN / "keystile"), "serve"]
        self.proc: subprocess.Popen | None = None

    def migrate(self) -> None:
        subprocess.run([str(BIN / "keystile"), "db", "upgrade"], env=self.env, check=True, cwd=self.tmp,
                       capture_output=True)

    def start(self) -> Keystile:
        self.migrate()
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*self.serve, "--config", str(self.config_path), "--port", str(self.port), *self.args],
            env=self.env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT)
        path = "/health/readiness" if self.wait_ready else "/health/liveliness"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"keystile exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"keystile did not become ready: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text()

    def __enter__(self) -> Keystile:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
