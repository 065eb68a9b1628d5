"""Local GGUF models through llama-cpp-python, each in its own managed worker process.

The gateway never imports llama_cpp: `LlamaCppBackend` starts `backends.llamacpp_worker` as a child
process and talks newline-delimited JSON with it over stdin/stdout, many requests multiplexed by id.
The worker generates one answer at a time; further requests wait here in a bounded queue
(full: BackendOverloaded). A worker that dies fails what it held (WorkerCrashed) and is restarted
with backoff; while a worker loads its model, calls raise ModelLoading, and while none is alive,
ModelCrashed naming how the last one ended. After `crash_limit` deaths in a row without serving a
token (a library built for another CPU segfaults on its first decode) the model is `failed`: calls
raise ModelCrashed until the next attempt, `crash_retry` seconds later (doubling up to
_MAX_CRASH_RETRY) or at once through `retry()`.

With `idle_timeout` (seconds) the worker is stopped after that long without a request, freeing its
memory (state `idle`); the next request starts it again and waits for it to load, within its
timeout, or gets ModelLoading (a 503 with Retry-After) when the model would not fit: when its
footprint (the worker's resident memory measured before it was stopped; before any load, the GGUF
file and a fifth more) plus `min_free_memory_mb` (memory to leave to everything else, default 0)
exceeds what /proc/meminfo calls available now.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from . import errors
from .base import Chunk, Completion, Usage, answer_id
from .llamacpp_params import chat_params, completion_params
from .llamacpp_process import WorkerProcess, resolve_model_path
from .memory import check_fits, resident_bytes

__all__ = ["LlamaCppBackend", "resolve_model_path"]

log = logging.getLogger("keystile.llamacpp")

_DEFAULT_THREADS = 2
_MAX_RESTART_DELAY = 30.0
_CANCEL_GRACE = 30.0  # a worker still busy with a cancelled request after this long is killed
_HEALTHY_UPTIME = 30.0  # a worker that lived this long restarts at once; a crash loop backs off
_MAX_CRASH_RETRY = 900.0
_CPU_HINT = ("a worker killed by SIGSEGV or SIGILL on its first token usually means llama-cpp-python was "
             "built for another CPU: rebuild it with scripts/llama-wheel.sh (see README)")

class LlamaCppBackend:
    """One GGUF model served by a supervised llama.cpp worker process (see the module docstring).

    `model` is a GGUF path or `package:<module>/<file.gguf>` (a file shipped inside an installed
    package). Extra keyword arguments that llama_cpp.Llama accepts (n_gpu_layers, n_batch,
    chat_format, flash_attn, logits_all, ...) are passed to it; others are ignored.
    """

    local = True

    def __init__(
        self,
        public_name: str,
        model: str,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        max_queue: int = 16,
        request_timeout: float = 120.0,
        crash_limit: int = 3,
        crash_retry: float = 60.0,
        idle_timeout: float | None = None,
        min_free_memory_mb: int = 0,
        **extra: Any,
    ):
        self.public_name = public_name
        self.model_path = resolve_model_path(model)
        self.max_queue = max(0, int(max_queue))
        self.request_timeout = float(request_timeout)
        threads = n_threads if n_threads else min(_DEFAULT_THREADS, os.cpu_count() or 1)
        llama_kwargs = {k: v for k, v in extra.items() if isinstance(v, str | int | float | bool | list | dict)}
        self._config = {
            "public_name": public_name,
            "model_path": self.model_path,
            "n_ctx": int(n_ctx),
            "n_threads": int(threads),
            "llama_kwargs": llama_kwargs,
        }
        self._ids = itertools.count(1)
        self._worker: WorkerProcess | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        self.restarts = 0
        self.crash_limit = max(1, int(crash_limit))
        self.crash_retry = float(crash_retry)
        self._crashes = 0  # deaths in a row without serving a token
        self.last_crash: str | None = None  # how the last worker died, with its last stderr lines
        self._failed_until: float | None = None  # loop time of the next attempt while failed
        self._retry_now = asyncio.Event()
        self.idle_timeout = float(idle_timeout) if idle_timeout else None
        self.min_free_memory = max(0, int(min_free_memory_mb)) << 20
        self._footprint: int | None = None  # bytes the loaded worker held when it was last stopped for idleness
        self._idle = False  # the worker was stopped for idleness; the next request starts it
        self._in_flight = 0
        self._last_used = 0.0  # loop time the last request ended
        self._idle_watch: asyncio.Task[None] | None = None
        self._waking: asyncio.Lock | None = None
        self._metadata: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the worker and return at once; the model loads in the background."""
        if self._supervisor is not None:
            return
        self._closed = False
        worker = await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(worker), name=f"llamacpp:{self.public_name}")
        if self.idle_timeout and self._idle_watch is None:
            self._last_used = asyncio.get_running_loop().time()
            self._idle_watch = asyncio.create_task(self._watch_idle(), name=f"llamacpp-idle:{self.public_name}")

    async def aclose(self) -> None:
        self._closed = True
        watch, self._idle_watch = self._idle_watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await self._stop_worker()

    async def _stop_worker(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        worker, self._worker = self._worker, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        if worker is not None:
            await worker.stop()

    async def _watch_idle(self) -> None:
        """Stop the worker once nothing has asked for it for `idle_timeout` seconds."""
        assert self.idle_timeout is not None
        loop = asyncio.get_running_loop()
        loaded: WorkerProcess | None = None
        while not self._closed:
            await asyncio.sleep(max(0.2, min(self.idle_timeout / 4, 5.0)))
            async with self._lifecycle():
                worker = self._worker
                if worker is not None and worker.ready and worker is not loaded:
                    loaded, self._last_used = worker, loop.time()  # the idle time counts from the load
                    continue
                if (self._idle or self._in_flight or worker is None or not worker.ready
                        or loop.time() - self._last_used < self.idle_timeout):
                    continue
                self._footprint = resident_bytes(worker.pid) or self._footprint
                self._idle = True  # from here a request waits for _wake (no await since the check)
                log.info("model %r idle for %.0fs: stopping its worker", self.public_name, self.idle_timeout)
                await self._stop_worker()

    def _lifecycle(self) -> asyncio.Lock:
        """Serializes stopping for idleness and starting again."""
        if self._waking is None:
            self._waking = asyncio.Lock()
        return self._waking

    async def _wake(self) -> None:
        """Start an idle model's worker again and wait for it to load (one waker; others wait)."""
        async with self._lifecycle():
            if not self._idle:
                return
            check_fits(self.public_name, self._footprint, self.model_path, self.min_free_memory)
            log.info("model %r requested while idle: starting its worker", self.public_name)
            self._idle = False
            await self.start()
        await self.wait_ready(self.request_timeout)

    async def _ready_worker(self) -> WorkerProcess:
        """The live worker, started again first if it was stopped for idleness."""
        if self._idle:
            await self._wake()
        return self._live_worker()

    @property
    def ready(self) -> bool:
        return self._worker is not None and self._worker.ready

    @property
    def crashes(self) -> int:
        """Workers that died in a row without serving a token (0 once the current one has served)."""
        worker = self._worker
        return 0 if worker is not None and worker.alive and worker.served else self._crashes

    @property
    def pid(self) -> int | None:
        """The current worker's process id (None before start)."""
        return self._worker.pid if self._worker is not None else None

    @property
    def queued(self) -> int:
        """Requests waiting for the worker (not counting the one it is running)."""
        return self._worker.queued if self._worker is not None else 0

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until a worker has loaded the model. Raises ModelLoading on timeout and
        WorkerCrashed if the model fails to load (or the backend is closed)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    worker = self._worker
                    if self._closed or worker is None:
                        raise errors.WorkerCrashed(f"llama.cpp backend {self.public_name!r} is not running")
                    await worker.settled.wait()
                    if worker.ready:
                        return
                    if worker.load_error:
                        raise errors.WorkerCrashed(self._load_failed(worker.load_error))
                    if self._failed_until is not None:
                        raise self._crashed()
                    await asyncio.sleep(0.05)  # it died: the supervisor is starting the next one
        except TimeoutError:
            raise errors.ModelLoading(f"model {self.public_name!r} is still loading") from None

    async def health(self) -> bool:
        return self.ready

    def describe(self) -> dict[str, Any]:
        """The GGUF file and, once a worker has loaded it, what its metadata says."""
        try:
            size = os.path.getsize(self.model_path)
        except OSError:
            size = None
        worker = self._worker
        if worker is not None and worker.ready:
            self._metadata = worker.metadata  # kept while the model is idle
        loaded = self._metadata
        return {"format": "gguf", "file": os.path.basename(self.model_path), "file_size_bytes": size,
                "loaded": self.ready, **loaded}

    async def _spawn(self) -> WorkerProcess:
        worker = await WorkerProcess.spawn(self._config, log)
        self._worker = worker
        return worker

    async def _supervise(self, worker: WorkerProcess) -> None:
        """Restart the worker whenever it dies: at once after a crash of a worker that served, with
        a growing pause while they keep dying unserved, and after `crash_limit` such deaths in a row
        only when the failed state's retry is due (or `retry()` asks)."""
        loop = asyncio.get_running_loop()
        retry_delay = self.crash_retry
        while not self._closed:
            started = loop.time()
            await worker.exited.wait()
            if self._closed:
                return
            lived = loop.time() - started
            if worker.served or (worker.was_ready and lived >= _HEALTHY_UPTIME):
                self._crashes, retry_delay = 0, self.crash_retry
            else:
                self._crashes += 1
            self.last_crash = self._describe_death(worker)
            failed = self.crashes >= self.crash_limit
            if failed:
                pause = retry_delay
                self._failed_until = loop.time() + pause
                log.error("model %r is failed; next attempt in %.0fs (or POST /health/restart): %s",
                          self.public_name, pause, self._crashed().message)
                retry_delay = min(retry_delay * 2, _MAX_CRASH_RETRY)
            else:
                pause = 0.1 if self.crashes == 0 else min(0.5 * 2 ** (self.crashes - 1), _MAX_RESTART_DELAY)
            while True:
                await self._pause(pause)
                self._failed_until = None  # the attempt is being made
                if self._closed:
                    return
                try:
                    worker = await self._spawn()
                    break
                except OSError as exc:
                    log.error("cannot start llama.cpp worker for %r: %s", self.public_name, exc)
                    pause = min(max(pause, 0.5) * 2, _MAX_RESTART_DELAY)
            if failed:
                self._crashes = self.crash_limit - 1  # one more attempt: a death fails it again at once
            self.restarts += 1
            log.warning("restarted llama.cpp worker for %r (restart %d)", self.public_name, self.restarts)

    async def _pause(self, seconds: float) -> None:
        """Sleep before the next start, cut short by retry()."""
        self._retry_now.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._retry_now.wait(), seconds)

    def retry(self) -> bool:
        """Start the next attempt now instead of when it is due; False if no worker is awaited."""
        worker = self._worker
        if self._closed or worker is None or worker.alive:
            return False
        self._failed_until = None
        self._retry_now.set()
        return True

    def _describe_death(self, worker: WorkerProcess) -> str:
        how = f"failed to load: {worker.load_error}" if worker.load_error else worker.exit_description
        tail = worker.stderr_tail()
        return f"{how}; last stderr: {tail}" if tail else how

    def status(self) -> dict[str, Any]:
        """The model's state for /health: loading, ready, idle, restarting, failed or stopped."""
        worker = self._worker
        if self._idle and not self._closed:
            return {"state": "idle", "idle_timeout": self.idle_timeout}
        if self._closed or worker is None:
            return {"state": "stopped"}
        if worker.alive and worker.load_error is None:
            return {"state": "ready" if worker.ready else "loading", "pid": worker.pid, "restarts": self.restarts,
                    "consecutive_crashes": self.crashes, **({"last_crash": self.last_crash} if self.last_crash else {})}
        crashed = self._crashed()
        return {"state": "failed" if self._failed_until is not None else "restarting", "code": crashed.code,
                "error": crashed.message, "retry_in_s": round(crashed.retry_after, 1),
                "restarts": self.restarts, "consecutive_crashes": self.crashes}

    def _load_failed(self, message: str) -> str:
        return f"model {self.public_name!r} failed to load from {self.model_path}: {message}"

    def _live_worker(self) -> WorkerProcess:
        worker = self._worker
        if self._closed or worker is None:
            raise errors.WorkerCrashed(f"llama.cpp backend {self.public_name!r} is not running")
        if not worker.ready:
            if worker.alive and worker.load_error is None:
                raise errors.ModelLoading(f"model {self.public_name!r} is loading, retry shortly")
            raise self._crashed()
        return worker

    def _crashed(self) -> errors.ModelCrashed:
        """The refusal while no worker is alive: failed (until the retry is due) or restarting."""
        worker = self._worker
        last = self.last_crash if self.last_crash is not None else self._describe_death(worker) if worker else "?"
        hint = f"; {_CPU_HINT}" if "SIGSEGV" in last or "SIGILL" in last or "SIGBUS" in last else ""
        if self._failed_until is not None:
            message = (f"model {self.public_name!r} crashed: its llama.cpp worker died {self.crashes} times in a "
                       f"row without serving a token ({last}){hint}")
            retry_after = self._failed_until - asyncio.get_running_loop().time()
        else:
            message, retry_after = f"model {self.public_name!r} crashed ({last}); restarting{hint}", 1.0
        return errors.ModelCrashed(message, retry_after=retry_after)

    # -- the protocol ------------------------------------------------------------------------------

    async def chat(self, body: dict) -> Completion:
        return await self._complete("chat", chat_params(body))

    def chat_stream(self, body: dict) -> AsyncGenerator[Chunk, None]:
        return self._stream("chat", chat_params(body), "chat.completion.chunk")

    async def complete(self, body: dict) -> Completion:
        return await self._complete("complete", completion_params(body))

    def complete_stream(self, body: dict) -> AsyncGenerator[Chunk, None]:
        return self._stream("complete", completion_params(body), "text_completion")

    async def rerank(self, body: dict) -> Completion:
        raise errors.NotSupported(f"{self.public_name}: rerank is not offered by llama.cpp models here; "
                                  "use a rerank-capable upstream (vLLM, a litellm rerank provider)")

    async def images(self, body: dict) -> Completion:
        raise errors.NotSupported(f"{self.public_name}: image generation is not offered by llama.cpp models")

    async def moderate(self, body: dict) -> Completion:
        raise errors.NotSupported(f"{self.public_name}: moderation is not offered by llama.cpp models here")

    async def embed(self, body: dict) -> Completion:
        params = {k: body[k] for k in ("input", "encoding_format", "dimensions") if body.get(k) is not None}
        return await self._complete("embed", params)

    async def tokenize(self, text: str) -> list[int]:
        return list((await self._at_once("tokenize", {"text": text}))["tokens"])

    async def encode(self, body: dict) -> Completion:
        """vLLM's /tokenize on llama.cpp's tokenizer: text (`prompt`) or `messages` rendered as a chat
        completion renders them, with each token's text."""
        params = {"pieces": True, "add_special": body.get("add_special_tokens", True) is not False}
        if body.get("messages") is not None:
            params.update(messages=chat_params(body)["messages"], tools=body.get("tools"))
        else:
            params["text"] = body.get("prompt")
        value = await self._at_once("tokenize", params)
        tokens = value["tokens"]
        return Completion(orjson.dumps({"count": len(tokens), "max_model_len": value["max_model_len"],
                                        "tokens": tokens, "token_strs": value.get("token_strings")}), None)

    async def decode(self, body: dict) -> Completion:
        """vLLM's /detokenize: `{tokens}` -> `{prompt}`."""
        value = await self._at_once("detokenize", {"tokens": body.get("tokens")})
        return Completion(orjson.dumps({"prompt": value["text"]}), None)

    async def _at_once(self, op: str, params: dict) -> dict:
        """A tokenizer operation, which the worker answers at once (also mid-generation)."""
        worker = await self._ready_worker()
        request = worker.submit(next(self._ids), op, params, holds_slot=False)
        try:
            async with asyncio.timeout(self.request_timeout):
                kind, value = await request.queue.get()
        except TimeoutError:
            raise errors.UpstreamTimeout(f"{op} on {self.public_name!r} timed out") from None
        finally:
            worker.forget(request)
        if kind == "error":
            raise value
        return value

    async def _complete(self, op: str, params: dict) -> Completion:
        async with contextlib.aclosing(self._call(op, params, stream=False)) as replies:
            async for kind, value in replies:
                if kind == "result":
                    value["model"] = self.public_name
                    return Completion(orjson.dumps(value), Usage.from_openai(value.get("usage")), answer_id(value))
        raise errors.BackendError(f"llama.cpp worker for {self.public_name!r} sent no result")

    async def _stream(self, op: str, params: dict, object_name: str) -> AsyncGenerator[Chunk, None]:
        head: dict[str, Any] = {}
        async with contextlib.aclosing(self._call(op, {**params, "stream": True}, stream=True)) as replies:
            async for kind, value in replies:
                if kind == "chunk":
                    head = value
                    yield Chunk(orjson.dumps(value))
                    continue
                usage = value.get("usage") or {}
                final = {
                    "id": head.get("id", ""),
                    "object": object_name,
                    "created": head.get("created", 0),
                    "model": self.public_name,
                    "choices": [],
                    "usage": usage,
                }
                yield Chunk(orjson.dumps(final), Usage.from_openai(usage), usage_only=True)

    async def _call(self, op: str, params: dict, *, stream: bool) -> AsyncGenerator[tuple[str, Any], None]:
        """Run one generation: wait for the worker's slot, send, relay what comes back. Leaving early
        (consumer gone, cancelled, timed out) cancels the request in the worker."""
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        try:
            async with contextlib.aclosing(self._relay(op, params, stream=stream)) as replies:
                async for reply in replies:
                    yield reply
        finally:
            self._in_flight -= 1
            self._last_used = loop.time()

    async def _relay(self, op: str, params: dict, *, stream: bool) -> AsyncGenerator[tuple[str, Any], None]:
        worker = await self._ready_worker()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        try:
            await worker.acquire(self.max_queue, deadline)
        except TimeoutError:
            raise errors.UpstreamTimeout(self._timeout_message()) from None
        request = worker.submit(next(self._ids), op, params, holds_slot=True)
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        kind, value = await request.queue.get()
                except TimeoutError:
                    raise errors.UpstreamTimeout(self._timeout_message()) from None
                if kind == "error":
                    raise value
                yield kind, value
                if kind == "result":
                    return
                if stream:
                    deadline = loop.time() + self.request_timeout
        finally:
            worker.abandon(request, grace=max(self.request_timeout, _CANCEL_GRACE))

    def _timeout_message(self) -> str:
        return f"model {self.public_name!r} gave no answer within {self.request_timeout:g}s"

