"""No usage record lost, nobody slowed by someone else's bad input: live gateways on the machine's
Postgres reached through a TCP proxy the test cuts (the database made unreachable without stopping
the machine's Postgres), stopped with SIGTERM during the outage, and killed with SIGKILL."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from .conftest import _service_up, relay_config
from .servers import Keystile
from .tcpproxy import TCPProxy
from .upstream import FakeUpstream

PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"]
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


class FreshDatabase:
    """A database of its own on the machine's Postgres, reached directly or through a cuttable proxy."""

    def __init__(self, proxy: TCPProxy):
        self.name = f"keystile_dur_{uuid.uuid4().hex[:10]}"
        self.proxy = proxy
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{self.name}"

    def sql(self, query: str) -> str:
        return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", self.name, "-tAc", query],
                              capture_output=True, text=True, check=True, timeout=10).stdout.strip()

    def rows(self) -> tuple[int, int]:
        """(rows, distinct request ids) in spend_logs, read directly (not through the proxy)."""
        rows, distinct = self.sql("SELECT count(*), count(DISTINCT request_id) FROM spend_logs").split("|")
        return int(rows), int(distinct)

    def wait_rows(self, n: int, timeout: float) -> tuple[int, int]:
        deadline = time.monotonic() + timeout
        while self.rows()[0] < n and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # and nothing more arrives
        return self.rows()


@pytest.fixture
def database() -> Iterator[FreshDatabase]:
    if not _service_up(5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    with TCPProxy(5432) as proxy:
        db = FreshDatabase(proxy)
        subprocess.run(PSQL + [f"CREATE DATABASE {db.name}"], check=True, capture_output=True)
        try:
            yield db
        finally:
            subprocess.run(PSQL + [f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)"], capture_output=True)


def chats(server: Keystile, n: int, key: str | None = None, body: dict = CHAT) -> list[int]:
    with httpx.Client(timeout=10) as client:
        return [client.post(server.url + "/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {key or server.master_key}"}).status_code
                for _ in range(n)]


def test_usage_recorded_during_an_outage_survives_a_shutdown(tmp_path, upstream: FakeUpstream,
                                                               database: FreshDatabase):
    """200 of 200 records were lost when Keystile stopped while the database was unreachable."""
    with Keystile(tmp_path, relay_config(upstream), database_url=database.url) as server:
        assert chats(server, 20) == [200] * 20
        assert database.wait_rows(20, 10) == (20, 20)
        database.proxy.cut()
        assert chats(server, 200) == [200] * 200  # the hot path needs no database
        server.stop()  # SIGTERM: the writer retries for its shutdown timeout, then gives up
        logs = server.logs()
    assert "200 usage records not yet in the database: kept in the usage journal" in logs, logs[-3000:]
    assert database.rows() == (20, 20)
    database.proxy.restore()
    with Keystile(tmp_path, relay_config(upstream), database_url=database.url) as again:
        assert database.wait_rows(220, 20) == (220, 220)  # replayed at start, each once
        assert "usage journal: 200 records" in again.logs()
    assert list((tmp_path / "keystile-usage").rglob("*.jsonl")) == []


def test_usage_survives_a_crash_of_the_gateway(tmp_path, upstream: FakeUpstream, database: FreshDatabase):
    """SIGKILL right after a burst (records still in memory) and during an outage: nothing lost,
    nothing stored twice, spend charged once."""
    cfg = relay_config(upstream)
    cfg["model_list"][0]["model_info"] = {"input_cost_per_token": 0.001, "output_cost_per_token": 0.001}
    server = Keystile(tmp_path, cfg, database_url=database.url).start()
    try:
        key = httpx.post(server.url + "/key/generate", json={}, headers={"Authorization": f"Bearer {server.master_key}"},
                         timeout=10).json()["key"]
        assert chats(server, 150, key) == [200] * 150
        server.proc.kill()  # at once: the last batch has not been written yet
        server.proc.wait()
        written = database.rows()[0]
        assert written < 150, "nothing was left to lose: the test proves nothing"
        server.start()
        assert database.wait_rows(150, 20) == (150, 150)
        assert chats(server, 1, key) == [200]  # cached in the new process
        database.proxy.cut()
        assert chats(server, 100, key) == [200] * 100
        server.proc.kill()
        server.proc.wait()
        database.proxy.restore()
        server.start()
        assert database.wait_rows(251, 20) == (251, 251)
        spend = float(database.sql("SELECT spend FROM keys"))
        logged = float(database.sql("SELECT sum(cost) FROM spend_logs"))
        assert spend == pytest.approx(logged) and spend > 0
    finally:
        server.stop()


def test_a_database_outage_is_logged_once_and_keys_back_off(tmp_path, upstream: FakeUpstream,
                                                            database: FreshDatabase):
    """The key cache used to query on every request during an outage, logging 971 tracebacks in 10 s."""
    cfg = relay_config(upstream, auth_failures_per_minute=100_000)
    with Keystile(tmp_path, cfg, database_url=database.url) as server:
        admin = {"Authorization": f"Bearer {server.master_key}"}
        key = httpx.post(server.url + "/key/generate", json={}, headers=admin, timeout=10).json()["key"]
        database.proxy.cut()
        with httpx.Client(timeout=10) as client:
            answers = [client.post(server.url + "/v1/chat/completions", json=CHAT,
                                   headers={"Authorization": f"Bearer sk-unknown-{i}"}) for i in range(300)]
        assert {r.status_code for r in answers} == {503}
        assert {r.json()["error"]["code"] for r in answers} == {"key_store_unavailable"}
        assert all(int(r.headers["retry-after"]) >= 1 for r in answers)
        time.sleep(2)
        database.proxy.restore()
        deadline = time.monotonic() + 15
        while chats(server, 1, key) != [200]:
            assert time.monotonic() < deadline, "keys never worked again"
            time.sleep(0.5)
        time.sleep(1.5)
        logs = server.logs()
    assert logs.count("key store unreachable") == 1 and logs.count("key store reachable again") == 1, logs[-3000:]
    assert logs.count("key change feed: cannot read changes") == 1
    assert "Traceback" not in logs and len(logs) < 20_000, logs[-3000:]


def test_a_nul_in_a_model_name_is_recorded_and_slows_nobody(tmp_path, upstream: FakeUpstream,
                                                             database: FreshDatabase):
    """Postgres refused the usage record of {"model": "mo\\u0000ck"} (NUL in text), and the writer
    redid its whole batch one row per transaction."""
    with Keystile(tmp_path, relay_config(upstream), database_url=database.url) as server:
        assert chats(server, 1, body={**CHAT, "model": "mo\u0000ck"}) == [404]
        assert chats(server, 50) == [200] * 50
        assert database.wait_rows(51, 10) == (51, 51)
        assert database.sql("SELECT model FROM spend_logs WHERE status = 404") == "mo\ufffdck"
        assert "rejected" not in server.logs()
