"""Usage accounting and budgets end to end: a real `keystile serve` (on SQLite and on Postgres), keys
made through /key/generate, and what /spend/logs, /global/spend, /spend/report and /key/info say
afterwards. Then a Postgres of the test's own that is stopped under load, and a SIGTERM right after
a burst: every request ends up as exactly one spend_logs row."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from proxy.accounting.prices import PriceMap
from proxy.core.estimates import estimate_prompt_tokens, requested_completion_tokens

from .conftest import model_entry, relay_config
from .servers import Keystile
from .test_accounting import PG_BIN, OwnPostgres
from .upstream import FakeUpstream

P_IN, P_OUT = 1e-3, 2e-3
PRICES = {"input_cost_per_token": P_IN, "output_cost_per_token": P_OUT}
FAST_PROMPT = 7  # the fake upstream's prompt_tokens, whatever the request
WORDS = "one two three four five six seven eight nine ten"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def config(upstream: FakeUpstream) -> dict:
    cfg = relay_config(upstream)
    cfg["model_list"] += [
        model_entry(upstream, "priced", "slowstream", model_info=PRICES),  # streams 0.2 s a word
        model_entry(upstream, "priced-fast", "echo-priced", model_info=PRICES),
    ]
    return cfg


def cost(prompt: int, completion: int) -> float:
    return prompt * P_IN + completion * P_OUT


@dataclass
class Prices:
    input_cost_per_token: float = P_IN
    output_cost_per_token: float = P_OUT


def max_cost(body: dict, tmp: Path) -> float:
    """What the gateway reserves against a budget for `body`: its own estimate and price map."""
    empty = tmp / "no-prices.json"
    empty.write_text("{}")
    return PriceMap(empty).max_cost("openai/slowstream", estimate_prompt_tokens(body),
                                    requested_completion_tokens(body), Prices())


class Gateway:
    def __init__(self, server: Keystile):
        self.server = server
        self.url = server.url

    async def post(self, path: str, body: dict, as_key: str | None = None) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as c:
            return await c.post(self.url + path, json=body, headers=auth(as_key or self.server.master_key))

    async def get(self, path: str, as_key: str | None = None, **params) -> httpx.Response:
        """GET with the master key, or `as_key`; `params` are the query (`key=` included)."""
        async with httpx.AsyncClient(timeout=30) as c:
            return await c.get(self.url + path, params=params, headers=auth(as_key or self.server.master_key))

    async def key(self, **fields) -> tuple[str, str]:
        r = await self.post("/key/generate", fields)
        assert r.status_code == 200, r.text
        return r.json()["key"], r.json()["token"]

    async def logs(self, key: str, n: int, timeout: float = 10.0) -> list[dict]:
        """The key's spend logs once there are `n` (the writer flushes every ~0.5 s), after checking
        that no more arrive for another second."""
        deadline = time.monotonic() + timeout
        while True:
            r = await self.get("/spend/logs", api_key=key, size=1000)
            assert r.status_code == 200, r.text
            rows = r.json()["data"]
            if len(rows) >= n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        rows = (await self.get("/spend/logs", api_key=key, size=1000)).json()["data"]
        assert len(rows) == n, f"{len(rows)} spend log rows for {n} requests: {Counter(r['status'] for r in rows)}"
        return rows

    async def key_info(self, key: str, spend: float, timeout: float = 10.0) -> dict:
        """/key/info (read with the key itself) once its spend has reached `spend`."""
        deadline = time.monotonic() + timeout
        while True:
            r = await self.get("/key/info", as_key=key)
            assert r.status_code == 200, r.text
            info = r.json()["info"]
            if info["spend"] >= spend - 1e-9 or time.monotonic() > deadline:
                return info
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gateway(request, tmp_path_factory, upstream):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    with Keystile(tmp_path_factory.mktemp(f"usage-{request.param}"), config(upstream), database_url=url) as s:
        yield Gateway(s)


# --- budgets ---------------------------------------------------------------------------------


async def read_stream(client: httpx.AsyncClient, url: str, key: str, body: dict) -> tuple[int, dict]:
    """(status, usage chunk of a 200 stream or the error of a refusal)."""
    async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=auth(key)) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, {"error": r.json()["error"], "retry-after": r.headers.get("retry-after")}
        usage = None
        async for line in r.aiter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                usage = httpx.Response(200, content=line[6:]).json()["usage"]
        return 200, usage


async def test_budget_holds_under_50_concurrent_streams(gateway: Gateway, tmp_path: Path):
    body = {"model": "priced", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 16,
            "messages": [{"role": "user", "content": WORDS}]}
    cap = max_cost(body, tmp_path)  # 16 prompt tokens estimated + 16 completion = 0.048
    assert cap == pytest.approx(cost(16, 16))
    budget = 3 * cap
    key, token = await gateway.key(max_budget=budget, budget_duration="1d")

    limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        results = await asyncio.gather(*(read_stream(client, gateway.url, key, body) for _ in range(50)))
    admitted = [usage for status, usage in results if status == 200]
    refused = [err for status, err in results if status == 429]
    assert len(admitted) + len(refused) == 50, Counter(status for status, _ in results)
    print(f"budget room for 3 at max cost: {len(admitted)} of 50 concurrent streams admitted")
    assert 1 <= len(admitted) <= 3  # admitted while spend + in flight < budget: at 0, cap and 2 * cap
    for r in refused:
        err = r["error"]
        assert err["type"] == "rate_limit_error" and err["code"] == "budget_exceeded"
        assert f"key:{token[:8]}" in err["message"] and f"max_budget {budget:.4f}" in err["message"]
        assert err["message"].startswith("Budget has been exceeded! ")  # LiteLLM's words, then Keystile's
        assert 86000 < int(r["retry-after"]) <= 86400  # the 1d window's reset
    spent = [cost(u["prompt_tokens"], u["completion_tokens"]) for u in admitted]
    assert all(s < cap for s in spent)  # 7 prompt + 11 completion tokens each

    # The actual cost is below the maximum, so more fits afterwards, one at a time, until the spend
    # reaches the budget (the last one admitted may pass it, by less than its maximum cost).
    for _ in range(10):
        r = await gateway.post("/v1/chat/completions", {**body, "stream": False}, as_key=key)
        if r.status_code != 200:
            break
        spent.append(cost(r.json()["usage"]["prompt_tokens"], r.json()["usage"]["completion_tokens"]))
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "budget_exceeded" and err["type"] == "rate_limit_error"
    assert f"max_budget {budget:.4f}, spent {sum(spent):.4f}, in flight 0.0000" in err["message"], err["message"]
    assert f"remaining {max(0.0, budget - sum(spent)):.4f}" in err["message"]  # none once spent past it
    assert budget <= sum(spent) < budget + cap  # refused once spent; overshoot below one request's max

    info = await gateway.key_info(key, sum(spent))
    assert info["spend"] == pytest.approx(sum(spent)), "the writer did not charge the key what the requests cost"
    assert info["spend"] <= budget + cap
    assert info["max_budget"] == pytest.approx(budget) and info["budget_duration"] == "1d"
    reset = datetime.fromisoformat(info["budget_reset_at"])
    reset = reset if reset.tzinfo else reset.replace(tzinfo=UTC)
    assert timedelta(hours=23) < reset - datetime.now(UTC) <= timedelta(days=1)
    rows = await gateway.logs(key, 50 + len(spent) - len(admitted) + 1)
    assert sum(row["cost"] for row in rows) == pytest.approx(sum(spent))
    assert Counter(row["status"] for row in rows) == {200: len(spent), 429: len(refused) + 1}


async def test_budget_holds_across_two_gateways(tmp_path, upstream, pg_url, redis_url):
    """The same burst split over two instances sharing Redis: still at most 3 admitted."""
    body = {"model": "priced", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 16,
            "messages": [{"role": "user", "content": WORDS}]}
    cap = max_cost(body, tmp_path)
    env, cfg = {"REDIS_URL": redis_url}, config(upstream)
    with Keystile(tmp_path, cfg, database_url=pg_url, env=env) as sa, \
            Keystile(tmp_path, cfg, database_url=pg_url, env=env) as sb:
        a, b = Gateway(sa), Gateway(sb)
        key, _ = await a.key(max_budget=3 * cap)  # a lifetime budget this time
        limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            results = await asyncio.gather(*(read_stream(client, g.url, key, body) for _ in range(25) for g in (a, b)))
        admitted = [usage for status, usage in results if status == 200]
        refused = [err for status, err in results if status == 429]
        print(f"two gateways: {len(admitted)} of 50 concurrent streams admitted")
        assert len(admitted) + len(refused) == 50 and 1 <= len(admitted) <= 3
        assert all(r["error"]["code"] == "budget_exceeded" and r["retry-after"] is None for r in refused)
        spent = sum(cost(u["prompt_tokens"], u["completion_tokens"]) for u in admitted)
        info = await a.key_info(key, spent)
        assert info["spend"] == pytest.approx(spent) and info["spend"] <= 3 * cap + cap


# --- accounting ------------------------------------------------------------------------------


async def test_every_request_is_accounted_exactly_once(gateway: Gateway):
    key, token = await gateway.key()
    t0 = datetime.now(UTC)
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": "how are you today"}]
    seen: list[tuple[int, int]] = []  # (prompt, completion) the client was told, successful requests

    for _ in range(2):
        r = await client.chat.completions.create(model="priced-fast", messages=messages)
        seen.append((r.usage.prompt_tokens, r.usage.completion_tokens))
    r = await client.completions.create(model="priced-fast", prompt="say hi there")
    seen.append((r.usage.prompt_tokens, r.usage.completion_tokens))
    r = await client.embeddings.create(model="priced-fast", input=["a", "b", "c"], encoding_format="float")
    seen.append((r.usage.prompt_tokens, 0))

    usage = None
    stream = await client.chat.completions.create(model="priced-fast", messages=messages, stream=True,
                                                  stream_options={"include_usage": True})
    async for chunk in stream:
        usage = chunk.usage or usage
    seen.append((usage.prompt_tokens, usage.completion_tokens))
    stream = await client.completions.create(model="priced-fast", prompt="say hi there", stream=True,
                                             stream_options={"include_usage": True})
    async for chunk in stream:
        usage = chunk.usage or usage
    seen.append((usage.prompt_tokens, usage.completion_tokens))
    # Without include_usage the client gets no usage: one chunk per word, and the upstream's prompt count.
    stream = await client.chat.completions.create(model="priced-fast", messages=messages, stream=True)
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)
    seen.append((FAST_PROMPT, sum(1 for c in chunks if c.choices and c.choices[0].delta.content)))

    with pytest.raises(openai.InternalServerError) as upstream_error:
        await client.chat.completions.create(model="failing", messages=messages)
    assert upstream_error.value.status_code == 502
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=messages)
    invalid = await gateway.post("/v1/chat/completions", {"model": "echo", "messages": "not a list"}, as_key=key)
    assert invalid.status_code == 400

    # A client that hangs up mid-stream: billed for what was generated until then.
    slow = await client.chat.completions.create(model="slow", stream=True, messages=[
        {"role": "user", "content": WORDS}])
    first = await anext(aiter(slow))
    assert first.choices[0].delta.content
    await slow.close()
    await client.close()

    rows = await gateway.logs(key, 11)
    assert len({row["request_id"] for row in rows}) == 11
    assert all(row["key_hash"] == token for row in rows)
    by_status = Counter(row["status"] for row in rows)
    gone = [row for row in rows if row["status"] == 499 or row["error_type"] == "client_disconnected"]
    assert len(gone) == 1, rows
    assert by_status == {200: 7, 502: 1, 404: 1, 400: 1, gone[0]["status"]: 1}
    assert gone[0]["model"] == "slow" and gone[0]["streamed"] and gone[0]["completion_tokens"] > 0

    ok = [row for row in rows if row["status"] == 200]
    assert sum(row["prompt_tokens"] for row in ok) == sum(p for p, _ in seen)
    assert sum(row["completion_tokens"] for row in ok) == sum(c for _, c in seen)
    assert sum(row["cost"] for row in ok) == pytest.approx(sum(cost(p, c) for p, c in seen))
    assert sorted(row["streamed"] for row in ok) == [False] * 4 + [True] * 3
    assert all(row["ttft_ms"] is not None for row in ok if row["streamed"])
    failed = {row["status"]: row for row in rows if row["status"] >= 400}
    assert failed[502]["model"] == "failing" and failed[502]["error_type"] == "upstream_error"
    assert failed[404]["model"] == "no-such-model" and failed[400]["error_type"] == "invalid_request_error"
    assert all(failed[s]["cost"] == 0 and failed[s]["completion_tokens"] == 0 for s in (502, 404, 400))

    total_prompt = sum(row["prompt_tokens"] for row in rows)
    total_completion = sum(row["completion_tokens"] for row in rows)
    total_cost = sum(row["cost"] for row in rows)
    info = await gateway.key_info(key, total_cost)
    assert info["spend"] == pytest.approx(total_cost)

    # Everything since t0 is this test's (tests run one at a time).
    g = (await gateway.get("/global/spend", start_date=t0.isoformat())).json()
    assert (g["requests"], g["prompt_tokens"], g["completion_tokens"]) == (11, total_prompt, total_completion)
    assert g["total_tokens"] == total_prompt + total_completion and g["spend"] == pytest.approx(total_cost)
    assert (await gateway.get("/global/spend", as_key=key)).status_code == 403  # admins only

    report = (await gateway.get("/spend/report", by="model", key=key)).json()
    assert report["by"] == "model"
    models = {g["group"]: g for g in report["data"]}
    assert set(models) == {"priced-fast", "failing", "no-such-model", "echo", "slow"}
    assert models["priced-fast"]["requests"] == 7 and models["priced-fast"]["cost"] == pytest.approx(total_cost)
    assert (models["priced-fast"]["prompt_tokens"], models["priced-fast"]["completion_tokens"]) == (
        sum(p for p, _ in seen), sum(c for _, c in seen))
    assert report["data"][0]["group"] == "priced-fast"  # most expensive first
    assert all(models[m]["requests"] == 1 for m in ("failing", "no-such-model", "echo", "slow"))
    days = (await gateway.get("/spend/report", by="day", key=key)).json()["data"]
    assert sum(d["requests"] for d in days) == 11 and days[-1]["group"] == datetime.now(UTC).strftime(
        "%Y-%m-%d")
    keys = (await gateway.get("/spend/report", by="key", since="1h")).json()["data"]
    assert [k["requests"] for k in keys if k["group"] == token] == [11]

    # A key reads its own logs, and only those.
    own = await gateway.get("/spend/logs", as_key=key, size=100)
    assert own.status_code == 200 and len(own.json()["data"]) == 11
    other, _ = await gateway.key()
    assert (await gateway.get("/spend/logs", as_key=other, api_key=key)).status_code == 403


# --- a database outage and a shutdown --------------------------------------------------------


@pytest.fixture(scope="module")
def own_pg():
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries in {PG_BIN}")
    pg = OwnPostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


def spend_rows(pg: OwnPostgres) -> tuple[int, int]:
    """(rows, distinct request ids) in the gateway's spend_logs on the test's own Postgres."""
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d", "postgres",
                          "-tAc", "SELECT count(*), count(DISTINCT request_id) FROM spend_logs"],
                         capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    rows, distinct = out.split("|")
    return int(rows), int(distinct)


async def wait_rows(pg: OwnPostgres, n: int, timeout: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while (await asyncio.to_thread(spend_rows, pg))[0] < n and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.0)  # and nothing more arrives
    return await asyncio.to_thread(spend_rows, pg)


CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


async def test_postgres_outage_under_load_loses_and_duplicates_nothing(tmp_path, upstream, own_pg):
    with Keystile(tmp_path, config(upstream), database_url=own_pg.url) as server:
        before = spend_rows(own_pg)[0]
        down = asyncio.Event()
        statuses: list[int] = []
        during_outage = 0

        async def worker(client: httpx.AsyncClient, n: int) -> None:
            nonlocal during_outage
            for _ in range(n):
                r = await client.post(server.url + "/v1/chat/completions", json=CHAT, headers=auth(server.master_key))
                statuses.append(r.status_code)
                during_outage += down.is_set()
                await asyncio.sleep(0.12)

        async def outage() -> None:
            await asyncio.sleep(1.5)
            await asyncio.to_thread(own_pg.stop, "fast")
            down.set()
            await asyncio.sleep(3.0)
            down.clear()
            await asyncio.to_thread(own_pg.start)

        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(outage(), *(worker(client, 60) for _ in range(5)))
        assert statuses == [200] * 300  # the hot path needs no database
        assert during_outage > 50, f"only {during_outage} requests were answered while Postgres was down"
        rows, distinct = await wait_rows(own_pg, before + 300, timeout=40)
        logs = server.logs()
    assert "usage writes failing" in logs, "the gateway never noticed the outage"
    assert (rows - before, distinct - before) == (300, 300), "records were lost or duplicated"


async def test_sigterm_right_after_a_burst_flushes_everything(tmp_path, upstream, own_pg):
    server = Keystile(tmp_path, config(upstream), database_url=own_pg.url).start()
    try:
        before = spend_rows(own_pg)[0]
        slow = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "a b c d e f"}]}
        limits = httpx.Limits(max_connections=150, max_keepalive_connections=150)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            streaming = asyncio.Event()

            async def stream() -> list[str]:
                async with client.stream("POST", server.url + "/v1/chat/completions", json=slow,
                                         headers=auth(server.master_key)) as r:
                    lines = []
                    async for line in r.aiter_lines():
                        if line.startswith("data:"):
                            lines.append(line)
                            streaming.set()
                    return lines

            streams = [asyncio.create_task(stream()) for _ in range(3)]
            burst = await asyncio.gather(*(client.post(server.url + "/v1/chat/completions", json=CHAT,
                                                       headers=auth(server.master_key)) for _ in range(120)))
            assert [r.status_code for r in burst] == [200] * 120
            await streaming.wait()
            stopping = asyncio.create_task(asyncio.to_thread(server.stop))  # SIGTERM, then wait for the exit
            finished = await asyncio.gather(*streams)
            await stopping
        # Streams in flight at SIGTERM are finished, not cut (uvicorn's graceful shutdown).
        assert all(lines[-1] == "data: [DONE]" for lines in finished), finished
        # uvicorn shuts down, then re-raises the SIGTERM it caught: exit status 0 or -SIGTERM.
        assert server.proc.returncode in (0, -signal.SIGTERM), server.logs()[-2000:]
        assert "Application shutdown complete" in server.logs()
        assert spend_rows(own_pg)[0] - before == 123, server.logs()[-2000:]
        assert "unwritten" not in server.logs()
    finally:
        server.stop()
