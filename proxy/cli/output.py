"""How admin answers look: JSON on stdout for --json, otherwise rich tables for people."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from .client import HASH, Gateway

# Tables for people; piped into a file or a pager they get room rather than an 80-column squeeze.
out = Console(highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)


def emit(gw: Gateway, data: Any, human: Callable[[], None]) -> None:
    if gw.as_json:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    else:
        human()


def fmt(name: str, value: Any) -> str:
    if name == "models" and value == []:
        return "all"
    if value is None or value == {} or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:.4f}" if name == "spend" else f"{value:g}"
    if isinstance(value, str) and (name.endswith(("_at", "_until")) or name == "expires"):
        return value[:19].replace("T", " ") + " UTC"  # the gateway stores UTC
    return str(value)


ORDER = ["key_alias", "team_alias", "user_id", "user_email", "user_role", "team_id", "key_name", "token", "key_type",
         "models", "aliases", "rpm_limit", "tpm_limit", "max_parallel_requests", "model_rpm_limit",
         "model_tpm_limit", "spend", "max_budget", "budget_duration", "budget_reset_at", "expires", "blocked",
         "metadata", "created_at", "updated_at", "last_used_at", "previous_valid_until"]
ALWAYS = {"models", "rpm_limit", "tpm_limit", "spend", "max_budget", "expires", "blocked"}
HIDDEN = {"id"}  # the row id: no command takes it


def record(title: str, row: dict) -> None:
    """One row as field/value lines; empty fields left out unless they say something (no limit, no expiry)."""
    table = Table(title=title, title_justify="left", show_header=False, box=box.SIMPLE, padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name in sorted(row, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        if name in HIDDEN or (name not in ALWAYS and row[name] in (None, {}, [])):
            continue
        table.add_row(name, fmt(name, row[name]))
    out.print(table)


def secret(raw: str) -> None:
    out.print("\nNew key (shown only this once; Keystile keeps only its hash, so store it now):", style="bold yellow")
    out.print(raw, soft_wrap=True, markup=False, highlight=False)


def _state(row: dict) -> str:
    if row.get("blocked"):
        return "blocked"
    expires = row.get("expires")
    if expires:
        when = datetime.fromisoformat(expires)
        if (when if when.tzinfo else when.replace(tzinfo=UTC)) < datetime.now(UTC):
            return "expired"
    return "active"


def _budget(row: dict) -> str:
    spend = f"{row.get('spend') or 0:.4f}"
    return spend if row.get("max_budget") is None else f"{spend}/{row['max_budget']:g}"


def _limits(row: dict) -> str:
    return f"{fmt('', row.get('rpm_limit'))}/{fmt('', row.get('tpm_limit'))}"


def _get(field: str, kind: str = "") -> Callable[[dict], str]:
    return lambda row: fmt(kind, row.get(field))


def rows_table(title: str, rows: list[dict], columns: dict[str, Callable[[dict], str]]) -> None:
    """A table of rows; columns that are empty in every row are left out to keep it narrow."""
    cells = [[get(row) for get in columns.values()] for row in rows]
    keep = [i for i, name in enumerate(columns) if not cells or any(c[i] not in ("-", "-/-") for c in cells)]
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i in keep:
        name = list(columns)[i]
        table.add_column(name, overflow="fold", min_width=min(len(name), 8))
    for row in cells:
        table.add_row(*(row[i] for i in keep))
    out.print(table)


KEY_COLUMNS = {
    "alias": _get("key_alias"), "key": _get("key_name"),
    "user": _get("user_id"), "team": _get("team_id"), "models": _get("models", "models"),
    "rpm/tpm": _limits, "spend $": _budget, "expires": lambda k: fmt("", (k.get("expires") or "")[:10] or None),
    "state": _state,
}
TEAM_COLUMNS = {"team_id": _get("team_id"), "alias": _get("team_alias"), "models": _get("models", "models"),
                "rpm/tpm": _limits, "spend $": _budget, "state": _state}
USER_COLUMNS = {"user_id": _get("user_id"), "email": _get("user_email"), "role": _get("user_role"),
                "team": _get("team_id"), "models": _get("models", "models"), "rpm/tpm": _limits,
                "spend $": _budget, "state": _state}


def page_footer(data: dict, noun: str, hint: str = "") -> None:
    out.print(f"page {data.get('current_page', 1)} of {max(data.get('total_pages') or 1, 1)}, "
              f"{data.get('total_count', 0)} {noun} in all{hint}", style="dim")


def shown(ref: str) -> str:
    """How to name a key in a message without repeating a secret."""
    if ref.startswith("sk-"):
        return f"sk-...{ref[-4:]}"
    return ref[:12] + "…" if HASH.fullmatch(ref) else ref


def key_label(info: dict) -> str:
    return f"{info['key_alias']} ({info.get('key_name')})" if info.get("key_alias") else info.get("key_name", "key")
