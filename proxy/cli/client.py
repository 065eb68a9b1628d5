"""What the admin commands share: the HTTP client for a gateway's admin API, one-line failures, the
option groups and the `command` decorator that adds --url/--master-key/--json to every command.

A failure exits non-zero with one line on stderr: 1 when the gateway refuses or cannot be reached,
2 for bad options. The gateway validates the fields, so its message is the one shown."""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.text import Text

DEFAULT_URL = "http://127.0.0.1:4000"
TIMEOUT = 30.0
HASH = re.compile(r"[0-9a-f]{64}")

err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, then exit non-zero."""
    err.print(Text.assemble(("error: ", "bold red"), " ".join(str(message).split())))
    raise typer.Exit(code)


class Gateway:
    """The admin API of one gateway; every refusal becomes `fail` with the server's message."""

    def __init__(self, url: str, master_key: str | None, as_json: bool):
        self.url, self.master_key, self.as_json = url.rstrip("/"), master_key, as_json
        self._client: httpx.Client | None = None

    def call(self, method: str, path: str, *, params: dict | None = None, body: dict | None = None) -> Any:
        if not self.master_key:
            fail("no master key: pass --master-key or set KEYSTILE_MASTER_KEY", 2)
        if self._client is None:
            self._client = httpx.Client(timeout=TIMEOUT, headers={"Authorization": f"Bearer {self.master_key}"})
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            r = self._client.request(method, self.url + path, params=params, json=body)
        except httpx.ConnectError:
            fail(f"cannot reach the gateway at {self.url} (is `keystile serve` running? set --url or KEYSTILE_URL)")
        except httpx.TimeoutException:
            fail(f"the gateway at {self.url} did not answer within {TIMEOUT:g}s")
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            fail(f"bad gateway URL {self.url!r}: {exc}", 2)
        except httpx.HTTPError as exc:
            fail(f"request to {self.url} failed: {type(exc).__name__}: {exc}")
        if r.status_code >= 400:
            fail(refusal(r))
        try:
            return r.json()
        except ValueError:
            fail(f"{self.url}{path} answered {r.status_code} without JSON: is this a Keystile gateway?")

    def check_models(self, models: list[str]) -> None:
        """Refuse model names the gateway does not serve (a typo would make a key that can do nothing)."""
        served = {m["id"] for m in self.get("/v1/models")["data"]}
        unknown = [m for m in models if m not in served]
        if unknown:
            fail(f"not served by this gateway: {', '.join(unknown)} (served: {', '.join(sorted(served)) or 'none'}); "
                 "pass --allow-unknown-models to use them anyway", 2)

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)

    def post(self, path: str, body: dict) -> Any:
        return self.call("POST", path, body=body)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def refusal(r: httpx.Response) -> str:
    try:
        data = r.json()
        e = data.get("error", data.get("detail"))
        message = e.get("message") if isinstance(e, dict) else e
    except (ValueError, AttributeError):
        message = None
    if not message:
        message = (r.text.strip().splitlines() or [r.reason_phrase])[0][:200]
    hint = " (check --master-key / KEYSTILE_MASTER_KEY)" if r.status_code == 401 else ""
    return f"{r.status_code} {r.reason_phrase}: {message}{hint}"


# --- options -----------------------------------------------------------------------------------

class KeyType(str, Enum):
    default = "default"
    llm_api = "llm_api"
    management = "management"


class Role(str, Enum):
    proxy_admin = "proxy_admin"
    internal_user = "internal_user"
    internal_user_viewer = "internal_user_viewer"


def _option(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


GATEWAY = "Gateway"
COMMON = [
    _option("url", Annotated[str, typer.Option("--url", envvar="KEYSTILE_URL", rich_help_panel=GATEWAY,
                                               help="the gateway's base URL")], DEFAULT_URL),
    _option("master_key", Annotated[str | None, typer.Option(
        "--master-key", envvar="KEYSTILE_MASTER_KEY", show_default=False, rich_help_panel=GATEWAY,
        help="the gateway's master key (prefer the environment variable)")]),
    _option("as_json", Annotated[bool, typer.Option("--json", rich_help_panel=GATEWAY,
                                                    help="print the answer as JSON on stdout, nothing else")], False),
]
LIMITS = [
    _option("models", Annotated[str | None, typer.Option(help="comma-separated model names; '' = all models")]),
    _option("unknown_models", Annotated[bool, typer.Option(
        "--allow-unknown-models", help="accept --models names this gateway does not serve (yet)")], False),
    _option("rpm", Annotated[int | None, typer.Option(help="requests per minute (rpm_limit)")]),
    _option("tpm", Annotated[int | None, typer.Option(help="tokens per minute (tpm_limit)")]),
    _option("parallel", Annotated[int | None, typer.Option(help="requests in flight (max_parallel_requests)")]),
    _option("budget", Annotated[float | None, typer.Option(help="max spend in USD (max_budget)")]),
    _option("budget_duration", Annotated[str | None, typer.Option(help="budget window, e.g. 30d")]),
    _option("metadata", Annotated[str | None, typer.Option(help="a JSON object, e.g. '{\"owner\": \"ci\"}'")]),
]
KEY_OPTIONS = [
    _option("alias", Annotated[str | None, typer.Option(help="a unique name for the key (key_alias)")]),
    *LIMITS,
    _option("expires", Annotated[str | None, typer.Option(
        help="a duration from now (90d) or an ISO 8601 time; 'never' clears it")]),
    _option("user", Annotated[str | None, typer.Option(help="owning user_id")]),
    _option("team", Annotated[str | None, typer.Option(help="owning team_id")]),
    _option("type", Annotated[KeyType | None, typer.Option("--type", help="key_type")]),
    _option("alias_map", Annotated[list[str] | None, typer.Option(
        "--alias-map", metavar="NAME=MODEL", help="a model alias for this key; repeatable")]),
]
BLOCK = [_option("blocked", Annotated[bool | None, typer.Option("--block/--unblock", show_default=False,
                                                                   help="block or unblock")])]
TEAM_OPTIONS = [_option("alias", Annotated[str | None, typer.Option(help="a unique name (team_alias)")]),
                *LIMITS]
USER_OPTIONS = [
    _option("email", Annotated[str | None, typer.Option(help="user_email")]),
    _option("role", Annotated[Role | None, typer.Option(help="user_role")]),
    _option("team", Annotated[str | None, typer.Option(help="team_id")]),
    *LIMITS,
]
YES = [_option("yes", Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")], False)]
PAGES = [_option("page", Annotated[int, typer.Option(help="page number")], 1),
         _option("size", Annotated[int, typer.Option(help="rows per page")], 50)]

FIELDS = {"alias": "key_alias", "rpm": "rpm_limit", "tpm": "tpm_limit", "parallel": "max_parallel_requests",
          "budget": "max_budget", "budget_duration": "budget_duration", "user": "user_id", "team": "team_id",
          "type": "key_type", "email": "user_email", "role": "user_role", "blocked": "blocked"}


def fields(opts: dict[str, Any], *, alias_field: str = "key_alias") -> dict[str, Any]:
    """The API body for the options that were given."""
    body: dict[str, Any] = {}
    for name, value in opts.items():
        if value is None or (name == "alias_map" and not value) or name == "unknown_models":
            continue
        if name == "models":
            body["models"] = [m.strip() for m in value.split(",") if m.strip()]
        elif name == "metadata":
            try:
                body["metadata"] = json.loads(value)
            except ValueError as exc:
                fail(f"--metadata is not valid JSON: {exc}", 2)
            if not isinstance(body["metadata"], dict):
                fail("--metadata must be a JSON object", 2)
        elif name == "alias_map":
            pairs = [item.partition("=") for item in value]
            if any(not (a.strip() and sep and b.strip()) for a, sep, b in pairs):
                fail("--alias-map takes NAME=MODEL", 2)
            body["aliases"] = {a.strip(): b.strip() for a, _, b in pairs}
        elif name == "expires":
            text = value.strip()
            if text.lower() in ("never", "none"):
                body["expires"] = None
            elif re.fullmatch(r"\d+\s*[A-Za-z]+", text):
                body["duration"] = text
            else:
                body["expires"] = text
        else:
            body[alias_field if name == "alias" else FIELDS[name]] = value.value if isinstance(value, Enum) else value
    return body


def command(group: typer.Typer, name: str, options: list[inspect.Parameter] = ()) -> Callable:
    """Register `func(gw, [opts,] *own params)` with its own parameters, the given option group (passed
    as one dict `opts`) and --url/--master-key/--json."""
    def register(func: Callable) -> Callable:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name not in ("gw", "opts")]
        params = own + list(options) + COMMON
        option_names = [p.name for p in options]

        def run(**kwargs: Any) -> None:
            gw = Gateway(kwargs.pop("url"), kwargs.pop("master_key"), kwargs.pop("as_json"))
            opts = {n: kwargs.pop(n) for n in option_names}
            try:
                if opts.get("models") and not opts.get("unknown_models", True):
                    gw.check_models(fields({"models": opts["models"]})["models"])
                func(gw, opts, **kwargs) if options else func(gw, **kwargs)
            except (typer.Exit, typer.Abort, KeyboardInterrupt):
                raise
            except Exception as exc:  # one line, never a traceback (and never a local variable)
                if os.environ.get("KEYSTILE_DEBUG"):
                    raise
                fail(f"unexpected {type(exc).__name__}: {exc}")
            finally:
                gw.close()

        run.__signature__ = inspect.Signature(params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        run.__name__, run.__qualname__, run.__doc__ = func.__name__, func.__qualname__, func.__doc__
        group.command(name)(run)
        return func
    return register


def confirm(yes: bool, what: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"refusing to delete {what} without --yes (no terminal to confirm on)", 2)
    if not typer.confirm(f"Delete {what}?", default=False, err=True):
        fail("cancelled, nothing deleted")
