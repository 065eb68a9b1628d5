"""`keystile keys …`: virtual keys through /key/*. A key is named by its raw secret, its hash (the
`token`) or its alias; the raw secret is printed once, by `create` and `rotate`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .client import HASH, KEY_OPTIONS, PAGES, YES, Gateway, command, confirm, fail, fields
from .output import KEY_COLUMNS, emit, key_label, out, page_footer, record, rows_table, secret, shown

keys_app = typer.Typer(help="Virtual keys: create, list, show, update, rotate, block, unblock, delete.",
                       no_args_is_help=True)

KeyRef = Annotated[str, typer.Argument(metavar="KEY", help="the key, its hash (token) or its alias")]


def is_secret_or_hash(ref: str) -> bool:
    return ref.startswith("sk-") or bool(HASH.fullmatch(ref))


def resolve(gw: Gateway, ref: str) -> str:
    """What the API accepts for KEY: the key or hash as given, or the token of the key with that alias."""
    if is_secret_or_hash(ref):
        return ref
    found = gw.get("/key/list", key_alias=ref, return_full_object="true", size=1)["keys"]
    if not found:
        fail(f"404: no key has the alias '{ref}'")
    return found[0]["token"]


@command(keys_app, "create", KEY_OPTIONS)
def create(gw: Gateway, opts: dict[str, Any]) -> None:
    """Create a key; its secret is printed this once.

    keystile keys create --alias ci-bot --models smollm2,gpt-4o --rpm 60 --tpm 20000 --budget 10
    --budget-duration 30d --expires 90d
    """
    created = gw.post("/key/generate", fields(opts))

    def human() -> None:
        record("key created", {k: v for k, v in created.items() if k != "key"})
        secret(created["key"])
    emit(gw, created, human)


@command(keys_app, "list", PAGES)
def list_keys(gw: Gateway, opts: dict[str, Any],
              user: Annotated[str | None, typer.Option(help="only this user's keys")] = None,
              team: Annotated[str | None, typer.Option(help="only this team's keys")] = None,
              alias: Annotated[str | None, typer.Option(help="only the key with this alias")] = None) -> None:
    """List keys (never their secrets), a page at a time."""
    data = gw.get("/key/list", return_full_object="true", user_id=user, team_id=team, key_alias=alias, **opts)

    def human() -> None:
        rows_table("keys", data["keys"], KEY_COLUMNS)
        page_footer(data, "keys", "; --json adds each key's token (hash)")
    emit(gw, data, human)


@command(keys_app, "show")
def show(gw: Gateway, key: KeyRef) -> None:
    """Show one key's fields, limits and spend."""
    data = gw.get("/key/info", key=resolve(gw, key))
    emit(gw, data, lambda: record(f"key {key_label(data['info'])}", {"token": data["key"], **data["info"]}))


@command(keys_app, "update", KEY_OPTIONS)
def update(gw: Gateway, opts: dict[str, Any], key: KeyRef) -> None:
    """Change a key's fields; only the options given change ('' for --models allows all models)."""
    body = fields(opts)
    if not body:
        fail("nothing to change: pass at least one option (see `keystile keys update --help`)", 2)
    data = gw.post("/key/update", {"key": resolve(gw, key), **body})
    emit(gw, data, lambda: record(f"key {key_label(data)} updated", data))


@command(keys_app, "rotate")
def rotate(gw: Gateway, key: KeyRef,
           grace: Annotated[str | None, typer.Option(
               help="the old secret keeps working this long, e.g. 1h (default: it stops now)")] = None) -> None:
    """Give a key a new secret (printed this once); its settings, spend and alias stay."""
    body = {"key": resolve(gw, key)}
    if grace is not None:
        body["grace_period"] = grace
    data = gw.post("/key/regenerate", body)

    def human() -> None:
        until = f"keeps working until {data['previous_valid_until'][:19].replace('T', ' ')} UTC" \
            if data.get("previous_valid_until") else "no longer works"
        out.print(f"Rotated key {key_label(data)}; the old secret {until}.")
        secret(data["key"])
    emit(gw, data, human)


def _set_blocked(gw: Gateway, key: str, blocked: bool) -> None:
    data = gw.post("/key/block" if blocked else "/key/unblock", {"key": resolve(gw, key)})
    emit(gw, data, lambda: out.print(f"{'Blocked' if blocked else 'Unblocked'} key {key_label(data)}."))


@command(keys_app, "block")
def block(gw: Gateway, key: KeyRef) -> None:
    """Block a key: every request with it gets 403 until it is unblocked."""
    _set_blocked(gw, key, True)


@command(keys_app, "unblock")
def unblock(gw: Gateway, key: KeyRef) -> None:
    """Unblock a key."""
    _set_blocked(gw, key, False)


@command(keys_app, "delete", YES)
def delete(gw: Gateway, opts: dict[str, Any],
           keys: Annotated[list[str], typer.Argument(metavar="KEY", help="keys, hashes or aliases")]) -> None:
    """Delete keys (all or none); asks first unless --yes."""
    keys = list(dict.fromkeys(keys))  # the API counts what it was sent against what it found
    confirm(opts["yes"], f"{len(keys)} key(s): {', '.join(shown(k) for k in keys)}")
    body: dict[str, list[str]] = {"keys": [k for k in keys if is_secret_or_hash(k)],
                                  "key_aliases": [k for k in keys if not is_secret_or_hash(k)]}
    data = gw.post("/key/delete", {k: v for k, v in body.items() if v})
    emit(gw, data, lambda: out.print(f"Deleted {len(data.get('deleted_keys', []))} key(s)."))
