"""`keystile doctor`: does every local model of the config load and generate on this machine?

A llama-cpp-python built for another CPU does not fail at install: its worker segfaults on the first
token. This runs each local model through the same supervised worker the gateway uses, generates a
few tokens, and says in one place what went wrong (`make test` runs it first)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from backends import errors
from backends.llamacpp import LlamaCppBackend

err = Console(stderr=True, soft_wrap=True, highlight=False)
PROMPT = {"messages": [{"role": "user", "content": "Say hello"}], "temperature": 0}


def llama_build() -> str:
    """llama-cpp-python's version and the CPU features its build uses (in a child: a broken library
    must not take this process down)."""
    code = "import llama_cpp; print(llama_cpp.__version__, '|', llama_cpp.llama_print_system_info().decode().strip())"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "importing llama_cpp timed out"
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return f"importing llama_cpp failed: {tail}"
    return done.stdout.strip()


async def check(backend: LlamaCppBackend, tokens: int, timeout: float) -> str:
    """Load, generate `tokens` tokens; the figure on success, a ModelCrashed/BackendError otherwise."""
    await backend.start()
    try:
        await backend.wait_ready(timeout)
        started = time.perf_counter()
        answer = await backend.chat({**PROMPT, "max_tokens": tokens})
        seconds = time.perf_counter() - started
        made = answer.usage.completion_tokens if answer.usage else 0
        text = orjson.loads(answer.body)["choices"][0]["message"]["content"]
        return f"{made} tokens in {seconds:.2f}s ({made / seconds:.0f} tokens/s): {text!r}"
    finally:
        await backend.aclose()


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(
        config: Annotated[Path, typer.Option(envvar="KEYSTILE_CONFIG", help="model map")] = Path("config.yaml"),
        tokens: Annotated[int, typer.Option(min=1, help="tokens to generate per model")] = 8,
        timeout: Annotated[float, typer.Option(help="seconds to wait for a model to load")] = 120.0,
    ) -> None:
        """Load every local (llama.cpp) model of the config and generate a few tokens with it."""
        from ..services import build_router
        from ..settings import ConfigError, load_config
        from backends.http import ClientPool

        try:
            file_config = load_config(config)
            router = build_router(file_config, file_config.effective(), ClientPool())
        except ConfigError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
        local = [d for d in router.deployments() if isinstance(d.backend, LlamaCppBackend)]
        if not local:
            err.print(f"{config}: no local models to check")
            return
        err.print(f"llama-cpp-python: {llama_build()}")
        failed = 0
        for d in local:
            d.backend.crash_limit = 1  # one death is the answer here; no restarts
            try:
                err.print(f"[green]ok[/green] {d.model_name}: {asyncio.run(check(d.backend, tokens, timeout))}")
            except errors.BackendError as exc:
                failed += 1
                err.print(f"[red]FAILED[/red] {d.model_name} ({d.backend.model_path}): {exc.message}")
        if failed:
            err.print("A local model that cannot run here makes every request to it fail (503 model_crashed). "
                      "If the worker was killed by a signal, rebuild llama-cpp-python for this CPU: "
                      "`rm -rf .venv ~/.cache/keystile/wheels && make install` (scripts/llama-wheel.sh).")
            raise typer.Exit(1)
