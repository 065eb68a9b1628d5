"""One incarnation of a llama.cpp worker process, seen from the gateway: the pipes, the requests
multiplexed over them by id, and the single generation slot with its bounded wait queue.

Protocol (newline-delimited orjson; see backends/llamacpp_worker.py for the other side):
  to worker    {"id", "op": "chat"|"complete"|"embed"|"tokenize", "params"} and {"id", "op": "cancel"}
  from worker  {"op": "ready"} | {"op": "fatal", "message"} | {"id", "chunk"} | {"id", "result"} | {"id", "error"}
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from . import errors

_READ_LIMIT = 64 * 1024 * 1024  # one protocol line may carry a whole batch of embeddings
_STOP_GRACE = 5.0


def resolve_model_path(model: str) -> str:
    """A GGUF path, or `package:<module>/<file.gguf>` for a file shipped inside an installed package.

    The package is located without being imported (a model wheel's __init__ may import things the
    gateway does not have, llama_cpp among them)."""
    if model.startswith("package:"):
        module, sep, relative = model[len("package:") :].partition("/")
        if not sep or not module or not relative:
            raise ValueError(f"model {model!r}: expected package:<module>/<file.gguf>")
        base = _package_dir(module.replace("-", "_"))
        if base is None:
            raise ValueError(f"model {model!r}: package {module!r} is not installed")
        path = base / relative
    else:
        path = Path(model).expanduser()
    if not path.is_file():
        raise ValueError(f"model file not found: {path} (model {model!r})")
    return str(path.resolve())


def _package_dir(module: str) -> Path | None:
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: found, not executed
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*rest)
        if candidate.is_dir():
            return candidate
    return None


@dataclass(eq=False)
class PendingRequest:
    id: int
    holds_slot: bool
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    done: bool = False
    abandoned: bool = False


class WorkerProcess:
    """A running `backends.llamacpp_worker`. Create with `await WorkerProcess.spawn(config, log)`."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str, log: logging.Logger):
        self.proc = proc
        self.name = name
        self.log = log
        self.ready = False
        self.was_ready = False
        self.served = False  # it delivered at least one token (chunk) or answer
        self.load_error: str | None = None
        self.metadata: dict = {}  # what the loaded GGUF says (sent with "ready")
        self.settled = asyncio.Event()  # ready, failed to load, or exited
        self.exited = asyncio.Event()
        self._pending: dict[int, PendingRequest] = {}
        self._busy = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._stopping = False
        self._stderr_tail: deque[str] = deque(maxlen=40)
        self._stdout_task = asyncio.create_task(self._read_stdout(), name=f"llamacpp-out:{name}")
        self._stderr_task = asyncio.create_task(self._read_stderr(), name=f"llamacpp-err:{name}")

    @classmethod
    async def spawn(cls, config: dict, log: logging.Logger) -> WorkerProcess:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "backends.llamacpp_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            limit=_READ_LIMIT,
        )
        log.info("llama.cpp worker for %r started (pid %d)", config["public_name"], proc.pid)
        worker = cls(proc, config["public_name"], log)
        worker._write(config)  # the first line is the configuration (not argv: `ps` shows argv)
        return worker

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    @property
    def queued(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    # -- the generation slot -----------------------------------------------------------------------

    async def acquire(self, max_queue: int, deadline: float) -> None:
        """Take the slot, or wait for it in the bounded queue. BackendOverloaded when the queue is
        full, TimeoutError at the deadline, WorkerCrashed if the worker dies meanwhile."""
        if not self.alive:
            raise self._crash_error()
        if not self._busy:
            self._busy = True
            return
        if self.queued >= max_queue:
            raise errors.BackendOverloaded(
                f"model {self.name!r} is busy: {self.queued} requests already waiting (max_queue {max_queue})"
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # the slot was handed over just as we gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over; it stays busy
                return
        self._busy = False

    # -- requests --------------------------------------------------------------------------------

    def submit(self, request_id: int, op: str, params: dict, *, holds_slot: bool) -> PendingRequest:
        if not self.alive or self.proc.stdin is None or self.proc.stdin.is_closing():
            if holds_slot:
                self.release()
            raise self._crash_error()
        request = PendingRequest(request_id, holds_slot)
        self._pending[request_id] = request
        self._write({"id": request_id, "op": op, "params": params})
        return request

    def abandon(self, request: PendingRequest, *, grace: float) -> None:
        """The caller stopped waiting: cancel in the worker; the slot frees when the worker says so.
        A worker that has not let go of the request after `grace` seconds is killed (and restarted)."""
        if request.done or not self.alive:
            self._pending.pop(request.id, None)
            return
        request.abandoned = True
        self._write({"id": request.id, "op": "cancel"})
        asyncio.get_running_loop().call_later(grace, self._watchdog, request)

    def forget(self, request: PendingRequest) -> None:
        self._pending.pop(request.id, None)

    def _watchdog(self, request: PendingRequest) -> None:
        if not request.done and self.alive:
            self.log.warning("llama.cpp worker for %r ignored a cancel; killing pid %d", self.name, self.pid)
            self.signal(signal.SIGKILL)

    def signal(self, signum: int) -> None:
        """Signal the worker unless it is known to have exited. Not Popen.send_signal: its poll()
        would reap the child behind asyncio's child watcher, which then reports exit code 255."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)

    def _write(self, message: dict) -> None:
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing():
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the reader sees the exit
            stdin.write(orjson.dumps(message) + b"\n")

    def _dispatch(self, message: dict) -> None:
        request_id = message.get("id")
        if request_id is None:
            op = message.get("op")
            if op == "ready":
                self.metadata = message.get("metadata") or {}
                self.ready = self.was_ready = True
                self.settled.set()
                self.log.info("model %r is ready (pid %d)", self.name, self.pid)
            elif op == "fatal":
                self.load_error = str(message.get("message") or "unknown error")
                self.log.error("model %r failed to load: %s", self.name, self.load_error)
            return
        request = self._pending.get(request_id)
        if request is None:
            return
        if "chunk" in message:
            self.served = True
            if not request.abandoned:
                request.queue.put_nowait(("chunk", message["chunk"]))
            return
        # A result or an error ends the request and frees the worker.
        request.done = True
        self._pending.pop(request_id, None)
        if request.holds_slot:
            self.release()
        if request.abandoned:
            tokens = (message.get("error") or {}).get("tokens", "all")
            self.log.debug("request %d to %r stopped after cancel (%s tokens generated)", request_id, self.name, tokens)
            return
        if "result" in message:
            self.served = self.served or request.holds_slot  # a generation answered (not a tokenize)
            request.queue.put_nowait(("result", message["result"]))
        else:
            request.queue.put_nowait(("error", self._error(message.get("error") or {})))

    def _error(self, error: dict) -> errors.BackendError:
        kind = error.get("kind")
        message = str(error.get("message") or "llama.cpp error")
        if kind == "invalid":
            return errors.UpstreamHTTPError(message, status=400, code=error.get("code") or "invalid_request")
        if kind == "unsupported":
            return errors.NotSupported(message, code="unsupported")
        if kind == "loading":
            return errors.ModelLoading(f"model {self.name!r} is loading, retry shortly")
        if kind == "cancelled":
            return errors.UpstreamTimeout(f"request to {self.name!r} was cancelled")
        return errors.BackendError(f"llama.cpp error in {self.name!r}: {message}", status=500)

    # -- process ---------------------------------------------------------------------------------

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                try:
                    message = orjson.loads(line)
                except orjson.JSONDecodeError:
                    self.log.warning("llama.cpp worker %r wrote a bad line: %.200r", self.name, line)
                    continue
                self._dispatch(message)
        except Exception:  # an over-long line, a broken pipe, a bad message: this worker is done for
            self.log.exception("llama.cpp worker %r: protocol error", self.name)
            self.signal(signal.SIGKILL)
        finally:
            await self.proc.wait()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)
            self._on_exit()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self._stderr_tail.append(text)
                self.log.debug("[%s] %s", self.name, text)

    def _on_exit(self) -> None:
        if self.exited.is_set():
            return
        if not self.was_ready and self.load_error is None and not self._stopping:
            self.load_error = f"the worker exited while loading ({self.exit_description})"
        self.ready = False
        self.exited.set()
        self.settled.set()
        if not self._stopping:
            self.log.warning("llama.cpp worker for %r exited (%s); last output: %s",
                             self.name, self.exit_description, self.stderr_tail() or "(none)")
        error = self._crash_error()
        for request in list(self._pending.values()):
            request.done = True
            if not request.abandoned:
                request.queue.put_nowait(("error", error))
        self._pending.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        self._busy = False

    def stderr_tail(self, lines: int = 5) -> str:
        """The worker's last lines of stderr, joined with ' | '. After a fatal signal, faulthandler's
        report instead: the error and the innermost frames (where llama.cpp was when it died)."""
        tail = list(self._stderr_tail)
        fatal = next((i for i, line in enumerate(tail) if line.startswith("Fatal Python error")), None)
        if fatal is not None:
            start = next((i for i in range(fatal, len(tail)) if tail[i].startswith("Current thread")), fatal)
            frames = []
            for line in tail[start + 1:]:
                if not line.strip().startswith("File "):
                    break
                frames.append(line.strip())
            return " | ".join([tail[fatal], *frames[:lines - 1]])
        return " | ".join(tail[-lines:])

    @property
    def exit_description(self) -> str:
        """How the worker ended: 'killed by SIGSEGV' or 'exit code 1'."""
        code = self.proc.returncode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def _crash_error(self) -> errors.WorkerCrashed:
        if self._stopping:
            return errors.WorkerCrashed(f"llama.cpp backend {self.name!r} is shutting down")
        tail = self.stderr_tail(3)
        return errors.WorkerCrashed(f"llama.cpp worker for {self.name!r} died ({self.exit_description})"
                                    + (f"; last stderr: {tail}" if tail else ""))

    async def stop(self) -> None:
        """Close stdin (the worker finishes its current token and exits), then escalate."""
        self._stopping = True
        for request in list(self._pending.values()):
            if not request.done:
                self._write({"id": request.id, "op": "cancel"})
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        for signum in (None, signal.SIGTERM, signal.SIGKILL):
            if signum is not None:
                self.signal(signum)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.exited.wait(), _STOP_GRACE)
                break
        for task in (self._stdout_task, self._stderr_task):
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._on_exit()  # normally done by the reader already; never leave a request hanging
