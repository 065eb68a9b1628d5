"""Local GGUF models through llama-cpp-python, each in its own managed worker process.

The gateway never imports llama_cpp: `LlamaCppBackend` starts `backends.llamacpp_worker` as a child
process and talks newline-delimited JSON with it over stdin/stdout, many requests multiplexed by id.
The worker generates one answer at a time; further requests wait here in a bounded queue
(full: BackendOverloaded). A worker that dies fails what it held (WorkerCrashed) and is restarted;
until a worker has loaded its model, calls raise ModelLoading.
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
from .base import Chunk, Completion, Usage
from .llamacpp_process import WorkerProcess, resolve_model_path

__all__ = ["LlamaCppBackend", "resolve_model_path"]

log = logging.getLogger("keystile.llamacpp")

_DEFAULT_THREADS = 2
_MAX_RESTART_DELAY = 30.0
_CANCEL_GRACE = 30.0  # a worker still busy with a cancelled request after this long is killed
_HEALTHY_UPTIME = 30.0  # a worker that lived this long restarts at once; a crash loop backs off

# OpenAI request fields -> llama-cpp-python keyword arguments (shared by chat and text completions).
_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
    "repetition_penalty": "repeat_penalty",
    "mirostat_mode": "mirostat_mode",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "grammar": "grammar",
}
_CHAT_ONLY = ("tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs")
_COMPLETION_ONLY = ("suffix", "echo", "logprobs")


class LlamaCppBackend:
    """One GGUF model served by a supervised llama.cpp worker process (see the module docstring).

    `model` is a GGUF path or `package:<module>/<file.gguf>` (a file shipped inside an installed
    package). Extra keyword arguments that llama_cpp.Llama accepts (n_gpu_layers, n_batch,
    chat_format, flash_attn, logits_all, ...) are passed to it; others are ignored.
    """

    def __init__(
        self,
        public_name: str,
        model: str,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        max_queue: int = 16,
        request_timeout: float = 120.0,
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

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the worker and return at once; the model loads in the background."""
        if self._supervisor is not None:
            return
        self._closed = False
        worker = await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(worker), name=f"llamacpp:{self.public_name}")

    async def aclose(self) -> None:
        self._closed = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.stop()

    @property
    def ready(self) -> bool:
        return self._worker is not None and self._worker.ready

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
                    await asyncio.sleep(0.05)  # it died: the supervisor is starting the next one
        except TimeoutError:
            raise errors.ModelLoading(f"model {self.public_name!r} is still loading") from None

    async def health(self) -> bool:
        return self.ready

    async def _spawn(self) -> WorkerProcess:
        worker = await WorkerProcess.spawn(self._config, log)
        self._worker = worker
        return worker

    async def _supervise(self, worker: WorkerProcess) -> None:
        """Restart the worker whenever it dies: at once after a crash while serving, with a growing
        pause while it keeps failing to load (or to start at all)."""
        delay = 0.5
        loop = asyncio.get_running_loop()
        while not self._closed:
            started = loop.time()
            await worker.exited.wait()
            if self._closed:
                return
            if worker.was_ready and loop.time() - started >= _HEALTHY_UPTIME:
                delay = 0.5
            pause = 0.1 if worker.was_ready else delay
            if not worker.was_ready:
                delay = min(delay * 2, _MAX_RESTART_DELAY)
            while True:
                await asyncio.sleep(pause)
                if self._closed:
                    return
                try:
                    worker = await self._spawn()
                    break
                except OSError as exc:
                    log.error("cannot start llama.cpp worker for %r: %s", self.public_name, exc)
                    pause, delay = delay, min(delay * 2, _MAX_RESTART_DELAY)
            self.restarts += 1
            log.warning("restarted llama.cpp worker for %r (restart %d)", self.public_name, self.restarts)

    def _load_failed(self, message: str) -> str:
        return f"model {self.public_name!r} failed to load from {self.model_path}: {message}"

    def _live_worker(self) -> WorkerProcess:
        worker = self._worker
        if self._closed or worker is None:
            raise errors.WorkerCrashed(f"llama.cpp backend {self.public_name!r} is not running")
        if not worker.ready:
            if worker.load_error:
                raise errors.WorkerCrashed(self._load_failed(worker.load_error))
            raise errors.ModelLoading(f"model {self.public_name!r} is loading, retry shortly")
        return worker

    # -- the protocol ------------------------------------------------------------------------------

    async def chat(self, body: dict) -> Completion:
        return await self._complete("chat", _chat_params(body))

    def chat_stream(self, body: dict) -> AsyncGenerator[Chunk, None]:
        return self._stream("chat", _chat_params(body), "chat.completion.chunk")

    async def complete(self, body: dict) -> Completion:
        return await self._complete("complete", _completion_params(body))

    def complete_stream(self, body: dict) -> AsyncGenerator[Chunk, None]:
        return self._stream("complete", _completion_params(body), "text_completion")

    async def embed(self, body: dict) -> Completion:
        params = {k: body[k] for k in ("input", "encoding_format", "dimensions") if body.get(k) is not None}
        return await self._complete("embed", params)

    async def tokenize(self, text: str) -> list[int]:
        worker = self._live_worker()
        request = worker.submit(next(self._ids), "tokenize", {"text": text}, holds_slot=False)
        try:
            async with asyncio.timeout(self.request_timeout):
                kind, value = await request.queue.get()
        except TimeoutError:
            raise errors.UpstreamTimeout(f"tokenize on {self.public_name!r} timed out") from None
        finally:
            worker.forget(request)
        if kind == "error":
            raise value
        return list(value["tokens"])

    async def _complete(self, op: str, params: dict) -> Completion:
        async with contextlib.aclosing(self._call(op, params, stream=False)) as replies:
            async for kind, value in replies:
                if kind == "result":
                    value["model"] = self.public_name
                    return Completion(orjson.dumps(value), Usage.from_openai(value.get("usage")))
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
                yield Chunk(orjson.dumps(final), Usage.from_openai(usage))

    async def _call(self, op: str, params: dict, *, stream: bool) -> AsyncGenerator[tuple[str, Any], None]:
        """Run one generation: wait for the worker's slot, send, relay what comes back. Leaving early
        (consumer gone, cancelled, timed out) cancels the request in the worker."""
        worker = self._live_worker()
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


# -- OpenAI request -> llama-cpp-python arguments --------------------------------------------------


def _common_params(body: dict, names: tuple[str, ...]) -> dict:
    n = body.get("n")
    if n is not None and n != 1:
        raise errors.NotSupported("llama.cpp models generate one choice per request: n must be 1", code="unsupported")
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise errors.NotSupported("llama.cpp models do not support best_of", code="unsupported")
    params = {target: body[name] for name, target in _SAMPLING.items() if body.get(name) is not None}
    params.update({name: body[name] for name in names if body.get(name) is not None})
    return params


def _chat_params(body: dict) -> dict:
    params = _common_params(body, _CHAT_ONLY)
    params["messages"] = [_message(m) for m in body.get("messages") or []]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            params["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
        elif response_format.get("type") == "json_object":
            params["response_format"] = response_format
    return params


def _completion_params(body: dict) -> dict:
    params = _common_params(body, _COMPLETION_ONLY)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        if len(prompt) != 1:
            raise errors.NotSupported("llama.cpp models take one prompt per request", code="unsupported")
        prompt = prompt[0]
    params["prompt"] = prompt
    if body.get("max_tokens") is not None:
        params["max_tokens"] = body["max_tokens"]
    return params


def _message(message: Any) -> Any:
    """Flatten OpenAI content parts to the plain string GGUF chat templates expect."""
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if content is None:
        return {**message, "content": ""}
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                texts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                texts.append(part)
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                message_text = f"this llama.cpp model takes text only, not {kind!r} content"
                raise errors.NotSupported(message_text, code="unsupported")
        return {**message, "content": "".join(texts)}
    return message
