"""A redis-server of our own on a free port (plain, with a password and ACL user, or TLS), to take
away and bring back."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from contextlib import suppress

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(port: int) -> bool:
    with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


class OwnRedis:
    """`args` are redis-server options (e.g. `--requirepass x`); with `tls` = (cert, key) files it
    listens with TLS only."""

    def __init__(self, *args: str, tls: tuple[str, str] | None = None):
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{self.port}/0"
        listen = ["--port", str(self.port)]
        if tls:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", tls[0],
                      "--tls-key-file", tls[1], "--tls-auth-clients", "no"]
        self.command = ["redis-server", *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                        "--daemonize", "no", *args]
        self.proc: subprocess.Popen | None = None

    def start(self) -> OwnRedis:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while not reachable(self.port):
            if self.proc.poll() is not None:
                output = self.proc.stdout.read().decode() if self.proc.stdout else ""
                if "--tls-port" in self.command and "TLS" in output:
                    pytest.skip(f"this redis-server has no TLS: {output[-300:]}")
                raise AssertionError(f"redis-server exited: {output[-1000:]}")
            assert time.time() < deadline, "redis-server did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
