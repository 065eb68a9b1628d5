"""`keystile usage`: requests, tokens and cost from /spend/report, grouped by day, model or key."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from .client import Gateway, command
from .keys import resolve
from .output import emit, fmt, rows_table


class By(str, Enum):
    day = "day"
    model = "model"
    key = "key"


def register(app: typer.Typer) -> None:
    @command(app, "usage")
    def usage(gw: Gateway,
              key: Annotated[str | None, typer.Option(help="only this key (the key, its hash or its alias)")] = None,
              team: Annotated[str | None, typer.Option(help="only this team")] = None,
              since: Annotated[str | None, typer.Option(help="only the last 30s/10m/1h/7d/30d")] = None,
              by: Annotated[By, typer.Option(help="group rows by")] = By.day) -> None:
        """Usage and spend, grouped by day, model or key."""
        data = gw.get("/spend/report", key=resolve(gw, key) if key else None, team_id=team, since=since,
                      by=by.value)

        def human() -> None:
            name = (lambda r: r.get("label") or fmt("", r["group"])) if by is By.key else (lambda r: fmt("", r["group"]))
            columns = {by.value: name, "requests": lambda r: str(r["requests"]),
                       "prompt tokens": lambda r: str(r["prompt_tokens"]),
                       "completion tokens": lambda r: str(r["completion_tokens"]),
                       "cost $": lambda r: f"{r['cost']:.6f}"}
            rows_table(f"usage by {by.value}" + (f" since {since}" if since else ""), data["data"], columns)
        emit(gw, data, human)
