"""The admin CLI (`keystile keys|teams|users`): the real console script against a live gateway, its
keys used through the real openai SDK; --json parses; every failure is one line on stderr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest

from .conftest import relay_config
from .servers import Keystile
from .upstream import free_port

KEYSTILE = Path(sys.executable).parent / "keystile"
RAW_KEY = re.compile(r"sk-[A-Za-z0-9_-]{40,}")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request, tmp_path_factory, upstream):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    with Keystile(tmp_path_factory.mktemp("cli"), relay_config(upstream), database_url=url) as s:
        s.outputs = []  # everything the CLI printed, to check the master key never appears
        yield s
        for text in s.outputs:
            assert s.master_key not in text


def cli(server: Keystile, *args: str, url: str | None = None, master_key: str | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KEYSTILE_")}
    environ.update({"KEYSTILE_URL": url or server.url, "KEYSTILE_MASTER_KEY": master_key or server.master_key,
                    "COLUMNS": "200", **(env or {})})
    r = subprocess.run([str(KEYSTILE), *args], env=environ, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=30, check=False)
    server.outputs += [r.stdout, r.stderr]
    return r


def ok(server: Keystile, *args: str) -> str:
    r = cli(server, *args)
    assert r.returncode == 0 and r.stderr == "", (args, r.returncode, r.stderr)
    return r.stdout


def js(server: Keystile, *args: str):
    return json.loads(ok(server, *args, "--json"))


def failure(r: subprocess.CompletedProcess, code: int | None = None) -> str:
    """The one line a failed command prints; nothing on stdout."""
    assert r.returncode != 0 and (code is None or r.returncode == code), (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and r.stdout == "", (r.stdout, r.stderr)
    return lines[0]


def chat(server: Keystile, key: str, model: str = "echo") -> int:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    try:
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as exc:
        return exc.status_code
    assert answer.choices[0].message.content == "echo: hi"
    return 200


def test_key_lifecycle(server):
    out = ok(server, "keys", "create", "--alias", "ci-bot", "--models", "echo,slow", "--rpm", "60", "--tpm", "20000",
             "--budget", "10", "--budget-duration", "30d", "--expires", "90d")
    [key] = RAW_KEY.findall(out)
    assert "shown only this once" in out and "ci-bot" in out

    info = js(server, "keys", "show", "ci-bot")["info"]
    assert (info["key_alias"], info["models"], info["rpm_limit"], info["tpm_limit"]) == ("ci-bot", ["echo", "slow"],
                                                                                          60, 20000)
    assert info["max_budget"] == 10 and info["budget_duration"] == "30d"
    expires = datetime.fromisoformat(info["expires"]).replace(tzinfo=UTC)
    assert abs(expires - datetime.now(UTC) - timedelta(days=90)) < timedelta(minutes=5)
    shown = ok(server, "keys", "show", key)  # by the raw key too; the secret is never printed again
    assert info["token"] in shown and key not in shown
    assert info["token"] in [k["token"] for k in js(server, "keys", "list")["keys"]]
    assert "ci-bot" in ok(server, "keys", "list")

    assert chat(server, key) == 200 and chat(server, key, "failing") == 403
    updated = js(server, "keys", "update", "ci-bot", "--models", "echo,failing", "--rpm", "100",
                 "--metadata", '{"owner": "ci"}', "--alias-map", "fast=echo")
    assert updated["rpm_limit"] == 100 and updated["metadata"] == {"owner": "ci"}
    assert updated["aliases"] == {"fast": "echo"} and chat(server, key, "fast") == 200
    assert chat(server, key, "failing") == 502  # allowed now; the upstream itself fails

    first = js(server, "keys", "rotate", "ci-bot")
    rotated = first["key"]
    assert chat(server, key) == 401 and chat(server, rotated) == 200
    out = ok(server, "keys", "rotate", first["token"], "--grace", "1h")  # a key named by its hash
    [graced] = RAW_KEY.findall(out)
    assert "keeps working until" in out and chat(server, rotated) == 200 and chat(server, graced) == 200
    token = js(server, "keys", "show", "ci-bot")["key"]

    assert "Blocked" in ok(server, "keys", "block", "ci-bot") and chat(server, graced) == 403
    assert js(server, "keys", "unblock", graced)["blocked"] is False and chat(server, graced) == 200

    line = failure(cli(server, "keys", "delete", "ci-bot"))  # stdin is no terminal: no silent deletion
    assert "--yes" in line and chat(server, graced) == 200
    assert js(server, "keys", "delete", "ci-bot", "--yes")["deleted_keys"] == [token]
    assert chat(server, graced) == 401 and chat(server, rotated) == 401
    assert "404" in failure(cli(server, "keys", "show", "ci-bot"))


def test_teams_and_users(server):
    team = js(server, "teams", "create", "--id", "cli-team", "--alias", "cli-ml", "--models", "echo", "--rpm", "30")
    assert team["team_id"] == "cli-team" and team["rpm_limit"] == 30
    assert "cli-ml" in ok(server, "teams", "list")
    assert "cli-team" in [t["team_id"] for t in js(server, "teams", "list", "--size", "1000")["teams"]]

    out = ok(server, "users", "create", "--id", "cli-alice", "--email", "alice@example.com", "--role",
             "internal_user", "--team", "cli-team", "--tpm", "1000")
    [alice_key] = RAW_KEY.findall(out)
    assert chat(server, alice_key) == 200 and chat(server, alice_key, "slow") == 403  # the team's models
    bob = js(server, "users", "create", "--id", "cli-bob", "--no-key")
    assert bob["user_id"] == "cli-bob" and "key" not in bob
    assert [u["user_id"] for u in js(server, "users", "list", "--team", "cli-team")["users"]] == ["cli-alice"]
    assert js(server, "users", "update", "cli-alice", "--budget", "5")["max_budget"] == 5
    assert "alice@example.com" in ok(server, "users", "show", "cli-alice")

    for _ in range(2):
        js(server, "keys", "create", "--user", "cli-alice", "--team", "cli-team")
    page = js(server, "keys", "list", "--user", "cli-alice", "--size", "2", "--page", "2")
    assert page["total_count"] == 3 and page["total_pages"] == 2 and len(page["keys"]) == 1
    assert len(js(server, "teams", "show", "cli-team")["keys"]) == 3
    assert "cli-ml" in ok(server, "teams", "show", "cli-team")

    assert js(server, "teams", "update", "cli-team", "--block")["blocked"] is True and chat(server, alice_key) == 403
    js(server, "teams", "update", "cli-team", "--unblock", "--alias", "cli-ml2")
    assert chat(server, alice_key) == 200

    assert "--yes" in failure(cli(server, "users", "delete", "cli-alice"))
    assert js(server, "users", "delete", "cli-alice", "cli-bob", "-y") == {"deleted_users": ["cli-alice", "cli-bob"]}
    assert chat(server, alice_key) == 401  # a user's keys go with it
    assert "Deleted" in ok(server, "teams", "delete", "cli-team", "--yes")
    assert "404" in failure(cli(server, "teams", "show", "cli-team"))


def test_team_members(server):
    js(server, "teams", "create", "--id", "cli-crew")
    added = js(server, "teams", "add-member", "cli-crew", "cli-carol", "--role", "admin", "--budget", "2")
    assert added["members_with_roles"] == [{"role": "admin", "user_id": "cli-carol", "user_email": None}]
    assert added["updated_team_memberships"][0]["max_budget_in_team"] == 2
    assert "cli-dave added to team cli-crew" in ok(server, "teams", "add-member", "cli-crew", "cli-dave")
    assert js(server, "teams", "update-member", "cli-crew", "cli-dave", "--budget", "0")["max_budget_in_team"] == 0
    key = js(server, "keys", "create", "--user", "cli-dave", "--team", "cli-crew")["key"]
    assert chat(server, key) == 429  # a member budget of 0
    assert js(server, "teams", "update-member", "cli-crew", "cli-dave", "--no-budget")["max_budget_in_team"] is None
    assert chat(server, key) == 200
    assert "nothing to change" in failure(cli(server, "teams", "update-member", "cli-crew", "cli-dave"), 2)
    assert "--yes" in failure(cli(server, "teams", "remove-member", "cli-crew", "cli-dave"))
    assert "Removed cli-dave" in ok(server, "teams", "remove-member", "cli-crew", "cli-dave", "--yes")
    assert chat(server, key) == 401  # the member's keys of the team went with the membership
    assert "404" in failure(cli(server, "teams", "update-member", "cli-crew", "cli-dave", "--role", "admin"))
    js(server, "teams", "delete", "cli-crew", "--yes")


def test_failures_are_one_line(server):
    line = failure(cli(server, "keys", "list", url=f"http://127.0.0.1:{free_port()}"), 1)
    assert "cannot reach the gateway" in line
    assert "401" in (line := failure(cli(server, "keys", "list", master_key="sk-wrong"), 1))
    assert "invalid API key" in line
    virtual = js(server, "keys", "create")["key"]
    assert "403" in failure(cli(server, "teams", "list", master_key=virtual), 1)  # not an admin key

    line = failure(cli(server, "keys", "create", "--budget-duration", "5x"), 1)
    assert "400" in line and "invalid duration '5x'" in line
    js(server, "keys", "create", "--alias", "taken")
    assert "409" in failure(cli(server, "keys", "create", "--alias", "taken"), 1)
    assert "409" in failure(cli(server, "keys", "update", virtual, "--alias", "taken"), 1)
    assert "404" in failure(cli(server, "users", "show", "nobody"), 1)
    assert "team_id 'nobody' does not exist" in failure(cli(server, "keys", "create", "--team", "nobody"), 1)

    # Mistakes caught before any request: exit code 2, still one line.
    assert "--rpm" in failure(cli(server, "keys", "create", "--rpm", "lots"), 2)
    assert "JSON" in failure(cli(server, "keys", "create", "--metadata", "{oops"), 2)
    assert "nothing to change" in failure(cli(server, "keys", "update", "taken"), 2)
    assert "master key" in failure(cli(server, "keys", "list", env={"KEYSTILE_MASTER_KEY": ""}), 2)

    # The master key from the environment is never shown, not even in help.
    assert server.master_key not in ok(server, "keys", "create", "--help")


def test_usage_report(server):
    key = js(server, "keys", "create", "--alias", "usage-bot")["key"]
    assert chat(server, key) == 200 and chat(server, key) == 200
    deadline = time.monotonic() + 10
    while True:  # usage records are written in batches, off the request path
        rows = js(server, "usage", "--key", key, "--by", "model", "--since", "1h")["data"]
        if rows and rows[0]["requests"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows == [{"group": "echo", "requests": 2, "prompt_tokens": 14, "completion_tokens": 4,
                     "cost": rows[0]["cost"], "label": None}]
    assert js(server, "usage", "--key", "usage-bot", "--by", "model", "--since", "1h")["data"] == rows  # by alias
    by_key = js(server, "usage", "--key", "usage-bot", "--by", "key")["data"]
    assert [(r["label"], r["requests"]) for r in by_key] == [("usage-bot", 2)]
    table = ok(server, "usage", "--by", "key", "--since", "1h")
    assert "usage-bot" in table and not re.search(r"[0-9a-f]{64}", table)  # aliases, never hashes
    table = ok(server, "usage", "--by", "day")
    assert "usage by day" in table and "requests" in table
    assert "invalid duration" in failure(cli(server, "usage", "--since", "soon"))


def test_keys_for_models_the_gateway_does_not_serve_are_refused(server):
    message = failure(cli(server, "keys", "create", "--alias", "typo-bot", "--models", "echo,nosuchmodel"), 2)
    assert "not served by this gateway: nosuchmodel (" in message and "--allow-unknown-models" in message
    assert js(server, "keys", "list", "--alias", "typo-bot")["keys"] == []  # nothing was created
    made = js(server, "keys", "create", "--alias", "later-bot", "--models", "nosuchmodel", "--allow-unknown-models")
    assert made["models"] == ["nosuchmodel"]
