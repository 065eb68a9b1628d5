"""`keystile deploy …`: models deployed through /api/v1/deploy (a GGUF on the gateway's host, or a
remote OpenAI-compatible server), their state, their log stream, stopping them."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import httpx
import typer

from .client import Gateway, command, fail, refusal
from .output import emit, out, record, rows_table

deploy_app = typer.Typer(help="Deployments: create, list, status, logs, stop.", no_args_is_help=True)

Id = Annotated[str, typer.Argument(metavar="DEPLOYMENT_ID", help="the deployment's id")]
COLUMNS = {"deployment_id": lambda r: r["deployment_id"], "api_name": lambda r: r["api_name"],
           "status": lambda r: r["status"], "model_id": lambda r: r["model_id"] or "-",
           "updated_at": lambda r: r["updated_at"]}


@command(deploy_app, "create")
def create(gw: Gateway,
           api_name: Annotated[str, typer.Option("--name", help="the model name clients will use")],
           model_id: Annotated[str | None, typer.Option("--model-id", help="GGUF path or package:<module>/<file.gguf>")] = None,
           api_base: Annotated[str | None, typer.Option(help="a remote OpenAI-compatible server instead")] = None,
           model: Annotated[str | None, typer.Option(help="with --api-base: the server's model name")] = None,
           n_ctx: Annotated[int | None, typer.Option(help="context length")] = None,
           idle_timeout: Annotated[float | None, typer.Option(help="seconds idle before the worker stops")] = None,
           min_free_memory_mb: Annotated[int | None, typer.Option(
               help="with --idle-timeout: memory to leave available when the worker starts again")] = None,
           ) -> None:
    """Deploy a model: keystile deploy create --name my-model --model-id /models/x.gguf"""
    body = {"api_name": api_name, "model_id": model_id, "api_base": api_base, "model": model, "n_ctx": n_ctx,
            "idle_timeout": idle_timeout, "min_free_memory_mb": min_free_memory_mb}
    created = gw.post("/api/v1/deploy", {k: v for k, v in body.items() if v is not None})
    emit(gw, created, lambda: record("deployment queued", created))


@command(deploy_app, "list")
def list_deployments(gw: Gateway) -> None:
    """Every deployment made through the API."""
    data = gw.get("/api/v1/deployments")
    emit(gw, data, lambda: rows_table("deployments", data["deployments"], COLUMNS))


@command(deploy_app, "status")
def status(gw: Gateway, deployment_id: Id) -> None:
    """One deployment's state (queued, starting, active, failed with the reason, stopped)."""
    data = gw.get(f"/api/v1/deployments/{deployment_id}/status")
    emit(gw, data, lambda: record(f"deployment {deployment_id}", data))


@command(deploy_app, "stop")
def stop(gw: Gateway, deployment_id: Id) -> None:
    """Stop a deployment: its model leaves the model map and its worker ends."""
    data = gw.post(f"/api/v1/deployments/{deployment_id}/stop", {})
    emit(gw, data, lambda: record(f"deployment {deployment_id}", data))


@command(deploy_app, "logs")
def logs(gw: Gateway, deployment_id: Id,
         follow: Annotated[bool, typer.Option("--follow/--no-follow", "-f", help="keep streaming")] = True) -> None:
    """Stream a deployment's log (and its process's CPU and memory), until it stops or Ctrl-C."""
    if not gw.master_key:
        fail("no master key: pass --master-key or set KEYSTILE_MASTER_KEY", 2)
    url = f"{gw.url}/api/v1/deployments/{deployment_id}/logs/stream"
    headers = {"Authorization": f"Bearer {gw.master_key}"}
    try:
        # Without --follow: what the log holds now, i.e. until the stream has been quiet for a second.
        with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(10, read=None if follow else 1.0)) as r:
            if r.status_code >= 400:
                r.read()
                fail(refusal(r))
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: "):
                    data = json.loads(line[len("data: "):])
                    if gw.as_json:
                        sys.stdout.write(json.dumps({"event": event, "data": data}) + "\n")
                    elif event == "log":
                        out.print(f"{data.get('timestamp', '')} {data['content']}", highlight=False, markup=False)
                    elif event == "metadata" and data.get("is_running"):
                        out.print(f"[dim]cpu {data['cpu_usage']}  memory {data['memory_usage']}[/dim]")
                    elif event == "deployment_info":
                        out.print(f"[bold]{data['api_name']}[/bold] ({data['deployment_id']}): {data['status']}")
    except httpx.ReadTimeout:
        if follow:
            raise
    except httpx.ConnectError:
        fail(f"cannot reach the gateway at {gw.url}")
