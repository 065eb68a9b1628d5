"""Rate limits end to end: a real `keystile serve`, virtual keys made through /key/generate, and bursts
of concurrent requests (httpx.AsyncClient) — on one instance (in-process counters) and split across
two instances sharing Redis and Postgres. Limits: key rpm/tpm/parallel, user and team limits across
their keys, a key's per-model limits, a deployment's own rpm from config.yaml, and the
x-ratelimit-* headers."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import httpx
import openai
import pytest

from .conftest import model_entry, relay_config
from .servers import Keystile
from .upstream import FakeUpstream

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
"""Prompt estimate 5 tokens ((2 + 3) // 4 + 4 per message); the fake upstream reports usage 7 + 2 = 9."""
ESTIMATE, ACTUAL = 5, 9
RESET = re.compile(r"^(\d+ms|\d+s|1m0s)$")


def reset_seconds(text: str) -> float:
    """OpenAI's reset format (`250ms`, `37s`, `1m0s`) in seconds."""
    m = RESET.match(text)
    assert m, text
    if text.endswith("ms"):
        return int(text[:-2]) / 1000
    return 60.0 if text == "1m0s" else float(text[:-1])


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def fresh_window(need_s: float = 8.0) -> None:
    """rpm/tpm count in fixed 60 s windows aligned to the epoch: when fewer than `need_s` seconds
    are left in this one, wait for the next, so a burst is counted in a single window."""
    left = 60 - time.time() % 60
    if left < need_s:
        await asyncio.sleep(left + 0.05)


class Gateway:
    """A running gateway seen through its admin API (master key) and its OpenAI routes."""

    def __init__(self, server: Keystile):
        self.server = server
        self.url = server.url

    async def admin(self, path: str, body: dict) -> dict:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.post(self.url + path, json=body, headers=auth(self.server.master_key))
        assert r.status_code == 200, r.text
        return r.json()

    async def key(self, **fields) -> tuple[str, str]:
        """A new virtual key: (raw key, its hash as shown in limit messages)."""
        made = await self.admin("/key/generate", fields)
        return made["key"], made["token"]

    async def chat(self, key: str, body: dict | None = None, path: str = "/v1/chat/completions") -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as c:
            return await c.post(self.url + path, json=body or CHAT, headers=auth(key))


async def burst(requests: list[tuple[str, str, dict]], path: str = "/v1/chat/completions") -> list[httpx.Response]:
    """Send every (base url, key, body) at once on its own connection; responses in order."""
    n = len(requests)
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return list(await asyncio.gather(*(client.post(url + path, json=body, headers=auth(key))
                                           for url, key, body in requests)))


def split(responses: list[httpx.Response]) -> tuple[list[httpx.Response], list[httpx.Response]]:
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == len(responses), {r.status_code for r in responses}
    return ok, refused


def assert_refused(r: httpx.Response, *fragments: str, code: str = "rate_limit_exceeded",
                   max_retry_after: int = 60) -> dict:
    """A 429 in OpenAI's shape, naming the limit (every fragment is in the message), with Retry-After."""
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["type"] == "rate_limit_error" and err["code"] == code, err
    for fragment in fragments:
        assert fragment in err["message"], (fragment, err["message"])
    assert 1 <= int(r.headers["retry-after"]) <= max_retry_after
    return err


def config(upstream: FakeUpstream, tag: str) -> dict:
    """relay_config plus: a second echo model, a model with one rpm-capped deployment, and a model
    with a capped and an uncapped deployment (upstream model names tell which one answered)."""
    cfg = relay_config(upstream)
    cfg["model_list"] += [
        model_entry(upstream, "echo-b", "echo-b"),
        model_entry(upstream, "capped", f"echo-capped-{tag}", rpm=3, model_info={"id": f"capped-{tag}"}),
        # Entry-level spelling of a deployment's rpm; weighted so it is nearly always tried first.
        {**model_entry(upstream, "shared", f"echo-shared-capped-{tag}", weight=1000,
                       model_info={"id": f"shared-capped-{tag}"}), "rpm": 3},
        model_entry(upstream, "shared", f"echo-shared-free-{tag}", model_info={"id": f"shared-free-{tag}"}),
        model_entry(upstream, "slowstart", "slowstart"),  # silent for 3 s (a long prefill), then answers
        model_entry(upstream, "drained", f"echo-drained-{tag}", rpm=0),  # 0 blocks everything
        {**model_entry(upstream, "drained-entry", f"echo-drained-entry-{tag}"), "rpm": 0},
        {**model_entry(upstream, "drained-entry-tpm", f"echo-drained-entry-tpm-{tag}"), "tpm": 0},
    ]
    return cfg


@pytest.fixture(scope="module")
def tag() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstream, tag):
    """One instance, in-process limiter (no REDIS_URL), its own SQLite."""
    with Keystile(tmp_path_factory.mktemp("limits"), config(upstream, tag)) as server:
        yield Gateway(server)


# --- rpm, one instance and two ---------------------------------------------------------------


async def test_rpm_50_concurrent_exactly_10(gateway: Gateway):
    key, token = await gateway.key(rpm_limit=10)
    await fresh_window()
    ok, refused = split(await burst([(gateway.url, key, CHAT)] * 50))
    assert (len(ok), len(refused)) == (10, 40)
    for r in refused:
        assert_refused(r, f"key:{token[:8]}", "10 requests per minute")
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok) == list(range(10))
    assert all(r.json()["choices"][0]["message"]["content"] == "echo: hi" for r in ok)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, upstream, tag, pg_url, redis_url):
    """Two instances sharing Redis (limits) and Postgres (keys)."""
    env = {"REDIS_URL": redis_url}
    cfg, tmp = config(upstream, tag), tmp_path_factory.mktemp("pair")
    with Keystile(tmp, cfg, database_url=pg_url, env=env) as a, Keystile(tmp, cfg, database_url=pg_url, env=env) as b:
        yield Gateway(a), Gateway(b)


async def test_rpm_shared_by_two_gateways(pair):
    a, b = pair
    key, token = await a.key(rpm_limit=10)
    await fresh_window()
    responses = await burst([(g.url, key, CHAT) for _ in range(25) for g in (a, b)])
    ok, refused = split(responses)
    assert (len(ok), len(refused)) == (10, 40), "the two gateways did not share the key's rpm"
    for r in refused:
        assert_refused(r, f"key:{token[:8]}", "10 requests per minute")
    # One counter for both: every admitted request saw a different count.
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok) == list(range(10))
    assert all(0 < reset_seconds(r.headers["x-ratelimit-reset-requests"]) <= 60 for r in ok)


async def test_tpm_settled_through_redis_by_two_gateways(pair):
    """Alternating instances: each one's settlement (actual 9 instead of the 15 reserved) is seen by the other."""
    a, b = pair
    key, token = await a.key(tpm_limit=100)
    body = {**CHAT, "max_tokens": 10}
    await fresh_window(15)
    for i in range(10):
        r = await (a, b)[i % 2].chat(key, body)
        assert r.status_code == 200, r.text
        assert int(r.headers["x-ratelimit-remaining-tokens"]) == 100 - (ACTUAL * i + ESTIMATE + 10)
    assert_refused(await b.chat(key, body), f"key:{token[:8]}", "100 tokens per minute", f"{ACTUAL * 10} used")
    assert_refused(await a.chat(key, body), "100 tokens per minute", f"{ACTUAL * 10} used")


async def test_parallel_slots_shared_by_two_gateways(pair):
    a, b = pair
    key, token = await a.key(max_parallel_requests=2)
    slow = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "a b c d e f g h i j"}]}
    started = asyncio.Event()

    async def hold(g: Gateway, client: httpx.AsyncClient) -> int:
        async with client.stream("POST", g.url + "/v1/chat/completions", json=slow, headers=auth(key)) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    started.set()
            return r.status_code

    async with httpx.AsyncClient(timeout=30) as client:
        first = asyncio.create_task(hold(a, client))
        await started.wait()
        started.clear()
        second = asyncio.create_task(hold(b, client))
        await started.wait()
        for g in (a, b):
            assert_refused(await g.chat(key), f"key:{token[:8]}", "2 parallel requests already in flight")
        assert not first.done() and not second.done()
        assert await first == 200 and await second == 200
    deadline = time.monotonic() + 2
    while (r := await b.chat(key)).status_code == 429 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert r.status_code == 200


# --- tpm -------------------------------------------------------------------------------------


async def test_tpm_reserves_the_estimate_and_settles_the_actual(gateway: Gateway):
    key, token = await gateway.key(tpm_limit=100)
    body = {**CHAT, "max_tokens": 10}  # reserves 5 + 10 = 15 at admission, settles at 9
    await fresh_window(15)
    reserve = ESTIMATE + 10
    admitted = 0
    for i in range(20):
        r = await gateway.chat(key, body)
        if r.status_code != 200:
            break
        assert r.headers["x-ratelimit-limit-tokens"] == "100"
        assert int(r.headers["x-ratelimit-remaining-tokens"]) == 100 - (ACTUAL * i + reserve)
        admitted += 1
    # Admitted while 9 * i + 15 <= 100: i = 0..9. Without settling to the actual 9 tokens it would be 6.
    assert admitted == 10
    assert_refused(r, f"key:{token[:8]}", "100 tokens per minute", f"{ACTUAL * 10} used",
                   f"this request reserves {reserve}")
    # A request whose estimate alone is over the limit is refused whatever was used.
    key2, _ = await gateway.key(tpm_limit=100)
    assert_refused(await gateway.chat(key2, {**CHAT, "max_tokens": 200}), "100 tokens per minute",
                   "0 used", f"this request reserves {ESTIMATE + 200}")
    assert (await gateway.chat(key2, body)).status_code == 200


# --- parallel --------------------------------------------------------------------------------


async def test_parallel_limit_with_slow_streams(gateway: Gateway):
    key, token = await gateway.key(max_parallel_requests=2)
    words = " ".join(f"w{i}" for i in range(12))  # 14 chunks, 0.2 s apart: ~2.8 s per stream
    slow = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": words}]}
    started = [asyncio.Event(), asyncio.Event()]

    async def hold(i: int, client: httpx.AsyncClient) -> tuple[int, list[str]]:
        """One slow stream read to its end; `started[i]` is set at its first chunk."""
        lines = []
        async with client.stream("POST", gateway.url + "/v1/chat/completions", json=slow, headers=auth(key)) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    lines.append(line)
                    started[i].set()
        started[i].set()
        return r.status_code, lines

    async with httpx.AsyncClient(timeout=30) as client:
        holders = [asyncio.create_task(hold(i, client)) for i in range(2)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 10)
        assert not any(t.done() for t in holders)

        third = await gateway.chat(key, slow)
        assert_refused(third, f"key:{token[:8]}", "2 parallel requests already in flight", max_retry_after=1)
        assert (await gateway.chat(key)).status_code == 429  # a JSON request counts the same
        assert not any(t.done() for t in holders), "the refusals were checked after a stream had ended"

        for status, lines in await asyncio.gather(*holders):
            assert status == 200 and len(lines) == 14 and lines[-1] == "data: [DONE]"
    # The slots are freed as the streams end (just after their last bytes went out).
    deadline = time.monotonic() + 2
    while (r := await gateway.chat(key)).status_code == 429 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert r.status_code == 200, r.text
    both = await burst([(gateway.url, key, CHAT)] * 2)
    assert [x.status_code for x in both] == [200, 200]


async def test_a_client_hanging_up_frees_its_parallel_slot(gateway: Gateway):
    key, _ = await gateway.key(max_parallel_requests=1)
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    stream = await client.chat.completions.create(model="slow", stream=True, messages=[
        {"role": "user", "content": "a b c d e f g h i j k l m n o p"}])  # ~3.4 s if read to the end
    await anext(aiter(stream))
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(**CHAT)
    await stream.close()
    deadline = time.monotonic() + 1.5  # long before the stream would have ended
    while (r := await gateway.chat(key)).status_code == 429 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert r.status_code == 200, "the slot of a client that hung up was not freed"
    await client.close()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_a_client_gone_before_the_first_byte_is_cancelled(gateway: Gateway, stream: bool):
    key, _ = await gateway.key(max_parallel_requests=1)
    body = {"model": "slowstart", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=0.3) as client:  # gives up while the upstream is still silent
        with pytest.raises(httpx.ReadTimeout):
            async with client.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=auth(key)):
                pass
    left = time.monotonic()
    while (r := await gateway.chat(key)).status_code == 429 and time.monotonic() - left < 1.5:
        await asyncio.sleep(0.1)
    assert r.status_code == 200, "the parallel slot of a client that left is held until the upstream answers"
    deadline = time.monotonic() + 5
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            rows = (await client.get(gateway.url + "/spend/logs", params={"api_key": key, "size": 1000},
                                     headers=auth(gateway.server.master_key))).json()["data"]
            gone = [row for row in rows if row["model"] == "slowstart"]
            if gone or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    assert len(gone) == 1 and gone[0]["status"] == 499 and gone[0]["error_type"] == "client_disconnected", gone
    assert gone[0]["completion_tokens"] == 0  # nothing was generated for it, nothing is billed


# --- user, team and per-model limits ---------------------------------------------------------


async def test_user_limit_applies_across_the_users_keys(gateway: Gateway):
    user = f"u-{uuid.uuid4().hex[:10]}"
    await gateway.admin("/user/new", {"user_id": user, "rpm_limit": 3, "auto_create_key": False})
    (k1, _), (k2, _) = await gateway.key(user_id=user), await gateway.key(user_id=user)
    await fresh_window()
    ok, refused = split(await burst([(gateway.url, k, CHAT) for _ in range(6) for k in (k1, k2)]))
    assert (len(ok), len(refused)) == (3, 9)
    for r in refused:
        assert_refused(r, f"user:{user}", "3 requests per minute")
    other, _ = await gateway.key()  # a key of nobody is not affected
    assert (await gateway.chat(other)).status_code == 200


async def test_team_limit_applies_across_the_teams_keys(gateway: Gateway):
    team = f"t-{uuid.uuid4().hex[:10]}"
    await gateway.admin("/team/new", {"team_id": team, "rpm_limit": 4})
    user = f"u-{uuid.uuid4().hex[:10]}"
    await gateway.admin("/user/new", {"user_id": user, "team_id": team, "auto_create_key": False})
    keys = [(await gateway.key(team_id=team))[0], (await gateway.key(team_id=team, user_id=user))[0],
            (await gateway.key(team_id=team, rpm_limit=100))[0]]
    await fresh_window()
    ok, refused = split(await burst([(gateway.url, k, CHAT) for _ in range(5) for k in keys]))
    assert (len(ok), len(refused)) == (4, 11)
    for r in refused:
        assert_refused(r, f"team:{team}", "4 requests per minute")


async def test_per_model_limit(gateway: Gateway):
    key, token = await gateway.key(model_rpm_limit={"echo": 2})
    await fresh_window()
    ok, refused = split(await burst([(gateway.url, key, CHAT)] * 6))
    assert (len(ok), len(refused)) == (2, 4)
    for r in refused:
        assert_refused(r, f"key:{token[:8]}…:model:echo", "2 requests per minute")
    ok_b, _ = split(await burst([(gateway.url, key, {**CHAT, "model": "echo-b"})] * 4))
    assert len(ok_b) == 4  # other models of the key are not limited


# --- a deployment's own rpm ------------------------------------------------------------------


def served_by(upstream: FakeUpstream, model: str) -> int:
    return sum(1 for body in list(upstream.requests) if body.get("model") == model)


async def test_deployment_rpm_from_config(gateway: Gateway, upstream: FakeUpstream, tag: str):
    master = gateway.server.master_key  # no key limits at all: only the deployment's
    await fresh_window(15)
    codes = [(await gateway.chat(master, {**CHAT, "model": "capped"})).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    fourth = await gateway.chat(master, {**CHAT, "model": "capped"})
    assert_refused(fourth, "every deployment of this model is at its rate limit", code="deployment_rate_limited")
    streamed = await gateway.chat(master, {**CHAT, "model": "capped", "stream": True})
    assert_refused(streamed, "at its rate limit", code="deployment_rate_limited")  # refused before any byte
    assert served_by(upstream, f"echo-capped-{tag}") == 3

    # Same model name, a second deployment without a limit: it takes what the capped one can't.
    ok, _ = split(await burst([(gateway.url, master, {**CHAT, "model": "shared"})] * 12))
    assert len(ok) == 12
    capped, free = served_by(upstream, f"echo-shared-capped-{tag}"), served_by(upstream, f"echo-shared-free-{tag}")
    assert (capped, free) == (3, 9)  # 9 were refused by the capped deployment first, then served by the other
    ok, _ = split(await burst([(gateway.url, master, {**CHAT, "model": "shared"})] * 6))
    assert len(ok) == 6 and served_by(upstream, f"echo-shared-capped-{tag}") <= 3

    # rpm 0 takes a deployment out of service.
    assert_refused(await gateway.chat(master, {**CHAT, "model": "drained"}), code="deployment_rate_limited")
    assert served_by(upstream, f"echo-drained-{tag}") == 0


@pytest.mark.parametrize("model", ["drained-entry", "drained-entry-tpm"])
async def test_entry_level_zero_limit_blocks_the_deployment(gateway: Gateway, upstream: FakeUpstream, model: str):
    r = await gateway.chat(gateway.server.master_key, {**CHAT, "model": model})
    assert_refused(r, code="deployment_rate_limited")


# --- headers ---------------------------------------------------------------------------------


async def test_ratelimit_headers_on_every_success(gateway: Gateway):
    key, _ = await gateway.key(rpm_limit=6, tpm_limit=1000)
    await fresh_window(15)
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    for i in range(4):
        raw = await client.chat.completions.with_raw_response.create(**CHAT)
        h = raw.headers
        assert raw.parse().usage.total_tokens == ACTUAL
        assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("6", str(5 - i))
        assert (h["x-ratelimit-limit-tokens"], h["x-ratelimit-remaining-tokens"]) == (
            "1000", str(1000 - ACTUAL * i - ESTIMATE))
        assert 0 < reset_seconds(h["x-ratelimit-reset-requests"]) <= 60
        assert h["x-ratelimit-reset-tokens"] == h["x-ratelimit-reset-requests"]  # one window for both
    # Streams carry them too, on the response head.
    async with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as stream:
        h = stream.headers
        assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("6", "1")
        assert int(h["x-ratelimit-remaining-tokens"]) == 1000 - ACTUAL * 4 - ESTIMATE
        assert RESET.match(h["x-ratelimit-reset-tokens"])
        async for _ in stream.iter_lines():
            pass
    # The last request of the window: remaining 0, then a refusal with the same reset.
    last = await client.chat.completions.with_raw_response.create(**CHAT)
    assert last.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(**CHAT)
    assert refused.value.body["type"] == "rate_limit_error" and "6 requests per minute" in refused.value.message
    await client.close()
