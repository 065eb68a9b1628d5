"""The `keystile` command: serve, migrate, and administer a running gateway over HTTP.

This package: `serve` and `db` here; `keys`, `teams`, `users` (admin API clients) in keys.py and
principals.py, on the HTTP client and option plumbing in client.py and the tables in output.py."""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .deploy import deploy_app
from .doctor import register as register_doctor
from .keys import keys_app
from .principals import teams_app, users_app
from .usage import register as register_usage

app = typer.Typer(help="Keystile: an OpenAI-compatible LLM gateway.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(teams_app, name="teams")
app.add_typer(users_app, name="users")
app.add_typer(deploy_app, name="deploy")
register_usage(app)
register_doctor(app)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


@app.command()
def serve(
    config: Annotated[Path, typer.Option(envvar="KEYSTILE_CONFIG", help="model map")] = Path("config.yaml"),
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 4000,
    workers: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    access_log: Annotated[bool, typer.Option(help="log every request")] = False,
) -> None:
    """Serve the gateway."""
    import uvicorn

    from ..http_server import ServerLimits
    from ..http_server import protocol as http_protocol
    from ..services import check_deployments
    from ..settings import ConfigError, Settings, load_config

    os.environ["KEYSTILE_CONFIG"] = str(config)
    settings = Settings()
    try:
        file_config = settings.apply(load_config(config))
        check_deployments(file_config)
        trusted = settings.trusted_proxies(file_config)
    except (ConfigError, ValueError) as exc:  # ValueError: e.g. HTTPS_PROXY names a socks4:// proxy
        fail(str(exc))
    if not (settings.keystile_master_key or file_config.general_settings.get("master_key")):
        fail("KEYSTILE_MASTER_KEY is not set (`make run` writes one into .env)")
    from ..db.migrate import ensure_current

    try:
        ensure_current(settings.database_url)
    except RuntimeError as exc:
        fail(str(exc))
    names = sorted({m.model_name for m in file_config.model_list})
    where = "the environment" if "KEYSTILE_MASTER_KEY" in os.environ else ".env (KEYSTILE_MASTER_KEY)"
    err.print(f"Keystile on [bold]http://{host}:{port}[/bold]  (OpenAI base URL: http://{host}:{port}/v1)")
    err.print(f"models: {', '.join(names) or '(none)'}")
    err.print(f"master key: from {where}; database: {settings.database_url.split('@')[-1]}")
    if workers > 1 and not settings.redis_url:
        err.print(f"[yellow]warning:[/yellow] --workers {workers} without REDIS_URL: each worker counts rate limits "
                  "and budgets alone (the limits are multiplied by the workers) and loads its own copy of every "
                  "local model. Set REDIS_URL to share limits, budgets, key changes and cooldowns.",
                  highlight=False)
    # Keystile's own log lines (writer outages, Redis fallbacks, ...) go out like uvicorn's.
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["keystile"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # The workers' metrics add up (prometheus-client's multiprocess mode, proxy/observe/metrics.py),
        # in a directory of this run's own.
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="keystile-metrics-")
    options = file_config.keystile_settings
    limits = ServerLimits(max_header_bytes=options.max_header_bytes, header_timeout=options.header_timeout,
                          body_timeout=options.body_timeout)
    # X-Forwarded-For is believed from the configured proxies only (uvicorn's own default trusts
    # 127.0.0.1, so a local client could pose as any address to the failed-auth throttle).
    uvicorn.run("proxy.app:factory", factory=True, host=host, port=port, workers=workers, loop="uvloop",
                http=http_protocol(limits), log_level=log_level, access_log=access_log,
                timeout_graceful_shutdown=30, log_config=log_config, proxy_headers=bool(trusted),
                forwarded_allow_ips=trusted or None)
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Apply the database migrations (SQLite or Postgres, from DATABASE_URL)."""
    from ..db.migrate import upgrade
    from ..settings import Settings

    settings = Settings()
    upgrade(settings.database_url, revision)
    err.print(f"database at {revision}: {settings.database_url.split('@')[-1]}")


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Abort:
        err.print("error: aborted", highlight=False)
        sys.exit(1)
    except Exception as exc:
        if not hasattr(exc, "format_message"):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help has been printed already
            sys.exit(getattr(exc, "exit_code", 2))
        # A usage error (click's ClickException, typer's own in newer versions): one line, not a panel.
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = " ".join(exc.format_message().split())
        err.print(f"error: {message}{hint}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
