"""`keystile teams …` and `keystile users …`: /team/* and /user/*. Deleting a team or user deletes
its keys too, as the API does."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .client import BLOCK, PAGES, TEAM_OPTIONS, USER_OPTIONS, YES, Gateway, Role, command, confirm, fail, fields
from .output import KEY_COLUMNS, TEAM_COLUMNS, USER_COLUMNS, emit, out, page_footer, record, rows_table, secret

teams_app = typer.Typer(help="Teams: create, list, show, update, delete; add, update and remove members.",
                        no_args_is_help=True)
users_app = typer.Typer(help="Users: create, list, show, update, delete.", no_args_is_help=True)

TeamId = Annotated[str, typer.Argument(metavar="TEAM_ID")]
UserId = Annotated[str, typer.Argument(metavar="USER_ID")]


def _show(gw: Gateway, kind: str, ident: str) -> None:
    data = gw.get(f"/{kind}/info", **{f"{kind}_id": ident})

    def human() -> None:
        record(f"{kind} {ident}", data[f"{kind}_info"])
        if data.get("keys"):
            rows_table(f"{kind} keys", data["keys"], KEY_COLUMNS)
    emit(gw, data, human)


def _update(gw: Gateway, kind: str, ident: str, body: dict[str, Any]) -> None:
    if not body:
        fail(f"nothing to change: pass at least one option (see `keystile {kind}s update --help`)", 2)
    data = gw.post(f"/{kind}/update", {f"{kind}_id": ident, **body})
    emit(gw, data, lambda: record(f"{kind} {ident} updated", data))


def _delete(gw: Gateway, kind: str, ids: list[str], yes: bool) -> None:
    ids = list(dict.fromkeys(ids))
    confirm(yes, f"{kind}(s) {', '.join(ids)} and all their keys")
    data = gw.post(f"/{kind}/delete", {f"{kind}_ids": ids})
    emit(gw, data, lambda: out.print(f"Deleted {kind}(s) {', '.join(ids)} and their keys."))


def _list(gw: Gateway, kind: str, columns: dict, **params: Any) -> None:
    data = gw.get(f"/{kind}/list", **params)

    def human() -> None:
        rows_table(f"{kind}s", data[f"{kind}s"], columns)
        page_footer(data, f"{kind}s")
    emit(gw, data, human)


# --- teams ----------------------------------------------------------------------------------------

@command(teams_app, "create", TEAM_OPTIONS)
def create_team(gw: Gateway, opts: dict[str, Any],
                id: Annotated[str | None, typer.Option("--id", help="team_id (default: a new UUID)")] = None) -> None:
    """Create a team; its limits and models bound every key in it."""
    body = fields(opts, alias_field="team_alias")
    data = gw.post("/team/new", {**body, "team_id": id} if id else body)
    emit(gw, data, lambda: record("team created", data))


@command(teams_app, "list", PAGES)
def list_teams(gw: Gateway, opts: dict[str, Any]) -> None:
    """List teams, a page at a time."""
    _list(gw, "team", TEAM_COLUMNS, **opts)


@command(teams_app, "show")
def show_team(gw: Gateway, team_id: TeamId) -> None:
    """Show a team with its keys and spend."""
    _show(gw, "team", team_id)


@command(teams_app, "update", TEAM_OPTIONS + BLOCK)
def update_team(gw: Gateway, opts: dict[str, Any], team_id: TeamId) -> None:
    """Change a team's fields; only the options given change."""
    _update(gw, "team", team_id, fields(opts, alias_field="team_alias"))


@command(teams_app, "delete", YES)
def delete_team(gw: Gateway, opts: dict[str, Any],
                team_ids: Annotated[list[str], typer.Argument(metavar="TEAM_ID")]) -> None:
    """Delete teams and their keys; asks first unless --yes."""
    _delete(gw, "team", team_ids, opts["yes"])


TeamRole = Annotated[str | None, typer.Option("--role", help="admin (may manage the team's members and keys) or user")]
MemberBudget = Annotated[float | None, typer.Option("--budget", help="max_budget_in_team (USD) for the member's keys")]


def _member(gw: Gateway, path: str, body: dict[str, Any], title: str) -> None:
    data = gw.post(path, body)
    emit(gw, data, lambda: record(title, data))


@command(teams_app, "add-member")
def add_member(gw: Gateway, team_id: TeamId, user_id: UserId, role: TeamRole = "user",
               budget: MemberBudget = None) -> None:
    """Add a user to a team (a user that does not exist yet is made)."""
    body: dict[str, Any] = {"team_id": team_id, "member": {"role": role, "user_id": user_id}}
    _member(gw, "/team/member_add", {**body, "max_budget_in_team": budget} if budget is not None else body,
            f"{user_id} added to team {team_id}")


@command(teams_app, "update-member")
def update_member(gw: Gateway, team_id: TeamId, user_id: UserId, role: TeamRole = None, budget: MemberBudget = None,
                  no_budget: Annotated[bool, typer.Option("--no-budget", help="remove the member's cap")] = False
                  ) -> None:
    """Change a member's role or max_budget_in_team."""
    body: dict[str, Any] = {"team_id": team_id, "user_id": user_id}
    if role is not None:
        body["role"] = role
    if budget is not None or no_budget:
        body["max_budget_in_team"] = None if no_budget else budget
    if len(body) == 2:
        fail("nothing to change: pass --role, --budget or --no-budget", 2)
    _member(gw, "/team/member_update", body, f"member {user_id} of team {team_id} updated")


@command(teams_app, "remove-member", YES)
def remove_member(gw: Gateway, opts: dict[str, Any], team_id: TeamId, user_id: UserId) -> None:
    """Remove a member from a team, with the member's keys of that team; asks first unless --yes."""
    confirm(opts["yes"], f"{user_id}'s membership of team {team_id} and their keys of that team")
    data = gw.post("/team/member_delete", {"team_id": team_id, "user_id": user_id})
    emit(gw, data, lambda: out.print(f"Removed {user_id} from team {team_id}."))


# --- users ----------------------------------------------------------------------------------------

@command(users_app, "create", USER_OPTIONS)
def create_user(gw: Gateway, opts: dict[str, Any],
                id: Annotated[str | None, typer.Option("--id", help="user_id (default: a new UUID)")] = None,
                no_key: Annotated[bool, typer.Option("--no-key", help="do not create a key for the user")] = False,
                ) -> None:
    """Create a user, and a key for them unless --no-key (its secret is printed this once)."""
    body = {**fields(opts), "auto_create_key": not no_key}
    data = gw.post("/user/new", {**body, "user_id": id} if id else body)

    def human() -> None:
        record("user created", {k: v for k, v in data.items() if k != "key"})
        if data.get("key"):
            secret(data["key"])
    emit(gw, data, human)


@command(users_app, "list", PAGES)
def list_users(gw: Gateway, opts: dict[str, Any],
               team: Annotated[str | None, typer.Option(help="only this team's users")] = None,
               role: Annotated[Role | None, typer.Option(help="only users with this role")] = None) -> None:
    """List users, a page at a time."""
    _list(gw, "user", USER_COLUMNS, team_id=team, user_role=role.value if role else None, **opts)


@command(users_app, "show")
def show_user(gw: Gateway, user_id: UserId) -> None:
    """Show a user with their keys and spend."""
    _show(gw, "user", user_id)


@command(users_app, "update", USER_OPTIONS + BLOCK)
def update_user(gw: Gateway, opts: dict[str, Any], user_id: UserId) -> None:
    """Change a user's fields; only the options given change."""
    _update(gw, "user", user_id, fields(opts))


@command(users_app, "delete", YES)
def delete_user(gw: Gateway, opts: dict[str, Any],
                user_ids: Annotated[list[str], typer.Argument(metavar="USER_ID")]) -> None:
    """Delete users and their keys; asks first unless --yes."""
    _delete(gw, "user", user_ids, opts["yes"])
