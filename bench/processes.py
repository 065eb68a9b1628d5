"""The processes of bench/relay_bench.py: spawning a server with its log, waiting for it to listen,
stopping it; the fast upstream and the minimal relay. Keystile itself starts in keystile_server.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent  # run with .venv/bin/python: keystile sits beside it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



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



def start_upstream(log_dir: Path, cpus: set[int] | None) -> Server:
    """bench/fast_upstream.py on a free port (not yet waited for: see wait_listening)."""
    port = free_port()
    return spawn("upstream", [sys.executable, str(BENCH / "fast_upstream.py"), "--port", str(port)],
                 port=port, log_dir=log_dir, cpus=cpus)


def start_relay(upstream_url: str, log_dir: Path, cpus: set[int] | None, client: str = "aiohttp") -> Server:
    """bench/minimal_relay.py on a free port, in front of the upstream (not yet waited for)."""
    port = free_port()
    return spawn("relay", [sys.executable, str(BENCH / "minimal_relay.py"), "--port", str(port),
                           "--upstream", upstream_url, "--client", client], port=port, log_dir=log_dir, cpus=cpus)
