"""The inference core driven with plain values and no HTTP server at all: `Gateway.call` over a
router of scripted backends (a small class implementing the Backend protocol), the real in-process
limiter, the real price map and the real usage writer on a migrated SQLite database. What the
core promises is checked where it lands: the answer's bytes, the limiter's counters, and the
spend_logs rows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from backends.base import Chunk, Completion, Usage
from backends.errors import UpstreamUnreachable
from backends.router import Deployment, Router, RouterPolicy
from proxy.accounting.prices import PriceMap
from proxy.accounting.writer import UsageWriter
from proxy.core import Answer, Disconnected, Gateway, Inference, Stream
from proxy.db.engine import Database
from proxy.db.migrate import upgrade
from proxy.db.spend import spend_logs
from proxy.dialects.openai import DIALECT
from proxy.domain import LimitExceeded, Principal, Scope
from proxy.errors import RateLimited, as_keystile
from proxy.limits import LocalLimiter

WORDS = ["Hello", " there", ",", " friend"]


class Scripted:
    """A backend answering from a script: fixed words, optionally slow, optionally failing."""

    local = False

    def __init__(self, name: str, *, delay: float = 0.0, fail: Exception | None = None, usage_chunk: bool = True):
        self.name, self.delay, self.fail, self.usage_chunk = name, delay, fail, usage_chunk
        self.bodies: list[dict] = []
        self.closed_streams = 0

    async def start(self) -> None:
        pass

    def status(self) -> dict:
        return {"state": "ready"}

    def retry(self) -> bool:
        return False

    async def chat(self, body: dict) -> Completion:
        self.bodies.append(body)
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        answer = {"object": "chat.completion", "model": body["model"],
                  "usage": {"prompt_tokens": 7, "completion_tokens": 4},
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)}}]}
        return Completion(orjson.dumps(answer), Usage(7, 4))

    async def chat_stream(self, body: dict) -> AsyncIterator[Chunk]:
        self.bodies.append(body)
        if self.fail is not None:
            raise self.fail
        try:
            for word in WORDS:
                await asyncio.sleep(self.delay)
                delta = {"index": 0, "delta": {"content": word}}
                yield Chunk(orjson.dumps({"object": "chat.completion.chunk", "choices": [delta]}))
            if self.usage_chunk and body["stream_options"]["include_usage"]:
                usage = b'{"prompt_tokens":7,"completion_tokens":4}'
                yield Chunk(b'{"object":"chat.completion.chunk","choices":[],"usage":' + usage + b"}", Usage(7, 4),
                            usage_only=True)
        finally:
            self.closed_streams += 1

    async def complete(self, body: dict) -> Completion:
        return await self.chat(body)

    def complete_stream(self, body: dict) -> AsyncIterator[Chunk]:
        return self.chat_stream(body)

    async def embed(self, body: dict) -> Completion:
        return Completion(b'{"object":"list","data":[]}', Usage(3, 0))

    async def tokenize(self, text: str) -> list[int]:
        return [0] * len(text.split())  # one token a word: distinguishable from the 4-characters estimate

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


@pytest.fixture(scope="module")
def db_url(tmp_path_factory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('core')}/keystile.db"
    with ThreadPoolExecutor(1) as pool:  # upgrade runs its own event loop
        pool.submit(upgrade, url).result()
    return url


class Core:
    """A Gateway over the given deployments, with the real limiter, prices and writer."""

    def __init__(self, db_url: str, deployments: list[Deployment]):
        self.db = Database(db_url)
        self.limiter = LocalLimiter()
        self.writer = UsageWriter(self.db, flush_interval=0.05)
        self.gateway = Gateway(Router(deployments, RouterPolicy(num_retries=1, allowed_fails=0)), self.limiter,
                               PriceMap(), self.writer)

    async def __aenter__(self) -> Core:
        self.writer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.writer.aclose()
        await self.db.aclose()

    async def rows(self, key_hash: str) -> list:
        assert await self.writer.flush(timeout=10)
        async with self.db.sessions() as session:
            return await spend_logs(session, key_hash=key_hash)


def caller(**limits) -> Principal:
    key_hash = uuid.uuid4().hex * 2
    return Principal(key_hash=key_hash, scopes=(Scope(f"key:{key_hash}", **limits),))


def chat(model: str = "m", *, stream: bool = False, **extra) -> Inference:
    return Inference({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra},
                     stream=stream, route="/test/chat")


async def test_a_json_call_is_answered_settled_and_recorded(db_url):
    backend = Scripted("a")
    async with Core(db_url, [Deployment("m", "m-0", backend, "openai/m")]) as core:
        principal = caller(parallel=1, tpm=1000)
        first = await core.gateway.call(principal, "chat", chat())
        assert isinstance(first, Answer)
        assert orjson.loads(first.body)["choices"][0]["message"]["content"] == "".join(WORDS)
        assert first.usage == Usage(7, 4)
        assert dict(first.headers)[b"x-ratelimit-limit-tokens"] == b"1000"
        second = await core.gateway.call(principal, "chat", chat())  # the parallel slot was released
        # The first settled at its real 7+4 tokens; the second reserves its estimate (5 for "hi").
        assert dict(second.headers)[b"x-ratelimit-remaining-tokens"] == b"%d" % (1000 - 11 - 5)
        rows = await core.rows(principal.key_hash)
    assert [(r.status, r.model, r.deployment, r.prompt_tokens, r.completion_tokens, r.route, r.streamed)
            for r in rows] == [(200, "m", "m-0", 7, 4, "/test/chat", False)] * 2


async def test_a_stream_relays_chunks_and_settles_when_it_ends(db_url):
    backend = Scripted("a")
    async with Core(db_url, [Deployment("m", "m-0", backend, "openai/m")]) as core:
        principal = caller(parallel=1)
        stream = await core.gateway.call(principal, "chat", chat(stream=True))
        assert isinstance(stream, Stream)
        try:
            chunks = [chunk async for chunk in stream]
        finally:
            await stream.aclose()
        assert backend.bodies[0]["stream_options"] == {"include_usage": True}  # always asked, for billing
        assert [c.usage for c in chunks] == [None] * len(WORDS) + [Usage(7, 4)]
        # The OpenAI dialect keeps that usage chunk from a client that did not ask for it.
        events = [e async for e in DIALECT.events(DIALECT.endpoints[0], chat(stream=True),
                                                   Stream(_replay(chunks), []))]
        assert events[-1] == (None, b"[DONE]") and len(events) == len(WORDS) + 1
        await core.gateway.call(principal, "chat", chat())  # parallel slot free again
        rows = await core.rows(principal.key_hash)
    streamed = [r for r in rows if r.streamed]
    assert [(r.status, r.prompt_tokens, r.completion_tokens) for r in streamed] == [(200, 7, 4)]
    assert streamed[0].ttft_ms is not None


async def _replay(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


async def test_a_stream_closed_early_is_billed_for_what_was_generated(db_url):
    backend = Scripted("a", usage_chunk=False)
    async with Core(db_url, [Deployment("m", "m-0", backend, "openai/m")]) as core:
        principal = caller(parallel=1)
        stream = await core.gateway.call(principal, "chat", chat(stream=True))
        async for _ in stream:
            break  # the client read one chunk and went away
        await stream.aclose()
        assert backend.closed_streams == 1  # the upstream stream was closed with it
        await core.gateway.call(principal, "chat", chat())  # the parallel slot is free
        rows = await core.rows(principal.key_hash)
    streamed = [r for r in rows if r.streamed][0]
    # Closed before its end: a client that went away, billed "Hello" (one word by the tokenizer).
    assert (streamed.status, streamed.error_type, streamed.completion_tokens) == (499, "client_disconnected", 1)


async def test_a_caller_that_goes_away_cancels_the_call(db_url):
    backend = Scripted("a", delay=5.0)
    async with Core(db_url, [Deployment("m", "m-0", backend, "openai/m")]) as core:
        principal = caller(parallel=1)
        gone = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, gone.set)
        started = asyncio.get_running_loop().time()
        with pytest.raises(Disconnected):
            await core.gateway.call(principal, "chat", chat(), disconnected=gone.wait)
        assert asyncio.get_running_loop().time() - started < 2
        backend.delay = 0.0
        await core.gateway.call(principal, "chat", chat())  # the parallel slot was released
        rows = await core.rows(principal.key_hash)
    assert sorted((r.status, r.error_type) for r in rows) == [(200, None), (499, "client_disconnected")]


async def test_deployment_limits_pass_a_busy_deployment_over_and_refuse_when_all_are(db_url):
    one, two = Scripted("one"), Scripted("two")
    deployments = [Deployment("m", "m-one", one, "openai/m", rpm=1), Deployment("m", "m-two", two, "openai/m", rpm=1)]
    async with Core(db_url, deployments) as core:
        principal = caller()
        for _ in range(2):
            await core.gateway.call(principal, "chat", chat())
        assert (len(one.bodies), len(two.bodies)) == (1, 1)  # the second went where there was room
        with pytest.raises(RateLimited) as refused:  # after admission: with the caller's x-ratelimit-* headers
            await core.gateway.call(principal, "chat", chat())
        cause = refused.value.__cause__
        assert isinstance(cause, LimitExceeded) and cause.scope in ("deployment:m-one", "deployment:m-two")
        assert "every deployment of this model is at its rate limit" in refused.value.message
        assert refused.value.code == "deployment_rate_limited" and refused.value.headers["Retry-After"]
        assert all(d.cooldown_until == 0 for d in deployments)  # busy is not unhealthy
        rows = await core.rows(principal.key_hash)
    assert sorted(r.status for r in rows) == [200, 200, 429]


async def test_a_failed_deployment_is_retried_on_another_and_cools_down(db_url):
    broken, good = Scripted("broken", fail=UpstreamUnreachable("connection refused")), Scripted("good")
    deployments = [Deployment("m", "m-broken", broken, "openai/m", weight=1e9),
                   Deployment("m", "m-good", good, "openai/m", weight=1e-9)]
    async with Core(db_url, deployments) as core:
        principal = caller()
        answer = await core.gateway.call(principal, "chat", chat())
        assert isinstance(answer, Answer) and len(broken.bodies) == 1 and len(good.bodies) == 1
        assert deployments[0].last_error == "connection refused" and deployments[0].cooldown_until > 0
        rows = await core.rows(principal.key_hash)
    assert [(r.status, r.deployment) for r in rows] == [(200, "m-good")]


async def test_refusals_before_the_backend_are_recorded(db_url):
    async with Core(db_url, [Deployment("m", "m-0", Scripted("a"), "openai/m")]) as core:
        principal = caller(rpm=1)
        await core.gateway.call(principal, "chat", chat())
        with pytest.raises(LimitExceeded) as refused:
            await core.gateway.call(principal, "chat", chat())
        assert refused.value.kind == "rpm" and as_keystile(refused.value).status == 429
        with pytest.raises(Exception) as unknown:
            await core.gateway.call(principal, "chat", chat("nope"))
        assert as_keystile(unknown.value).status == 404
        management = Principal(key_hash=uuid.uuid4().hex, key_type="management")
        with pytest.raises(Exception) as wrong:
            await core.gateway.call(management, "chat", chat())
        assert as_keystile(wrong.value).code == "wrong_key_type"
        rows = await core.rows(principal.key_hash)
    assert sorted((r.status, r.model) for r in rows) == [(200, "m"), (404, "nope"), (429, "m")]


async def test_a_stream_closed_before_it_was_read_still_frees_everything(db_url):
    backend = Scripted("a")
    deployment = Deployment("m", "m-0", backend, "openai/m", rpm=100)
    async with Core(db_url, [deployment]) as core:
        principal = caller(parallel=1)
        stream = await core.gateway.call(principal, "chat", chat(stream=True))
        assert deployment.in_flight == 1
        await stream.aclose()  # e.g. the client was gone before the first byte went out
        assert deployment.in_flight == 0 and backend.closed_streams == 1
        await core.gateway.call(principal, "chat", chat())  # the parallel slot is free
        rows = await core.rows(principal.key_hash)
    streamed = [r for r in rows if r.streamed]
    assert [(r.status, r.error_type) for r in streamed] == [(499, "client_disconnected")]
