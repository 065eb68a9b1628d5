from __future__ import annotations

import os

import pytest

from .anthropic_upstream import FakeAnthropic
from .runaway_upstream import RunawayUpstream
from .servers import Keystile
from .stack import stack  # noqa: F401  (the production stack fixture: nginx + two instances)
from .upstream import FakeUpstream


CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip is a failure (a service that is not running must not pass as green),
    unless the test is marked `may_skip` (a feature this machine's packages may lack)."""
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("may_skip") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"would be skipped, and CI=true allows no skip: {reason}"


@pytest.fixture(scope="session")
def upstream():
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="session")
def runaway():
    """The upstream that ignores max_tokens and stop, waits before its first chunk, reports cache reads."""
    with RunawayUpstream() as fake:
        yield fake


@pytest.fixture(scope="session")
def fake_anthropic():
    with FakeAnthropic() as fake:
        yield fake


def relay_config(upstream: FakeUpstream, **settings) -> dict:
    """A model map whose models all point at the fake upstream; the name picks its behaviour."""
    def entry(public: str, upstream_model: str, **params) -> dict:
        return {"model_name": public, "litellm_params": {"model": f"openai/{upstream_model}",
                                                          "api_base": upstream.base_url, "api_key": "upstream-secret",
                                                          **params}}
    return {
        "model_list": [
            entry("echo", "echo-upstream"),
            entry("failing", "fail"),
            entry("badreq", "badreq"),
            entry("hanging", "hang", timeout=1),
            entry("dropping", "drop"),
            entry("slow", "slowstream"),
            entry("with-fallback", "fail"),
        ],
        "keystile_settings": {"max_request_bytes": 65536, "num_retries": 1,
                              "fallbacks": [{"with-fallback": ["echo"]}], **settings},
    }


@pytest.fixture(scope="session")
def relay(tmp_path_factory, upstream):
    with Keystile(tmp_path_factory.mktemp("relay"), relay_config(upstream)) as server:
        yield server


def _service_up(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def redis_url():
    if not _service_up(6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def pg_url():
    """A fresh database on the machine's PostgreSQL for this test session, dropped afterwards."""
    import subprocess
    import uuid

    if not _service_up(5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = f"keystile_test_{uuid.uuid4().hex[:10]}"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"]
    subprocess.run(psql + [f"CREATE DATABASE {name}"], check=True, capture_output=True)
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    subprocess.run(psql + [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True)


def model_entry(upstream: FakeUpstream, public: str, upstream_model: str, *, model_info: dict | None = None,
                **params) -> dict:
    """One model_list entry pointing at the fake upstream (`rpm`/`tpm` and other litellm_params in
    `params`, prices or a fixed deployment `id` in `model_info`)."""
    entry: dict = {"model_name": public, "litellm_params": {"model": f"openai/{upstream_model}",
                                                             "api_base": upstream.base_url,
                                                             "api_key": "upstream-secret", **params}}
    if model_info:
        entry["model_info"] = model_info
    return entry


@pytest.fixture(scope="session")
def clients_gateway(tmp_path_factory, upstream):
    """A gateway for the client dialects' tests (Anthropic Messages, Responses): `echo` answers with
    text, `tools` calls the first tool it is offered (after a sentence; `toolsilent` without one),
    `pausing` goes quiet mid-stream, `failing` and `dropping` fail before and during a stream;
    `cohere-rerank` reranks through litellm's Cohere provider (to the same fake upstream)."""
    config = {"model_list": [model_entry(upstream, public, target) for public, target in (
        ("echo", "echo-upstream"), ("tools", "tools-upstream"), ("toolsilent", "toolsilent-upstream"),
        ("pausing", "pausing"), ("failing", "fail"), ("dropping", "drop"), ("badreq", "badreq"))]}
    config["model_list"].append({"model_name": "cohere-rerank", "litellm_params": {
        "model": "cohere/rerank-english-v3.0", "api_base": upstream.base_url.removesuffix("/v1"),
        "api_key": "cohere-secret"}})
    with Keystile(tmp_path_factory.mktemp("clients"), config) as server:
        yield server
