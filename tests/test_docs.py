"""Every command and recipe in docs/ run against the production stack (tests/stack.py): nginx over
HTTPS with the local CA -> two instances -> PostgreSQL + Redis -> the fake upstream. `make
docs-check` runs this file.

A page's fenced blocks run in order, as a reader would paste them into one shell:
- ```bash: bash with `set -euo pipefail`; exported variables carry over to the page's later blocks;
- ```python: the virtualenv's Python;  ```js: node (ES module) with the OpenAI Node SDK of tests/clients;
- ```yaml config: validated as config.yaml by Keystile's own loader (the check `keystile serve` runs);
- ```yaml continue: a Continue config.yaml, checked for structure and its models driven as Continue
  drives them (chat stream, autocomplete with a suffix, embeddings) with its key and CA;
- ```bash docker: docker cannot run here; its `docker compose` commands must name services and
  profiles docker-compose.yml has, and its other lines run;
- ```bash claude-code / ```bash codex: run, then the requests that client sends replayed with the
  settings the block left (Claude Code's variables; Codex's ~/.codex/config.toml and its env_key)
  over HTTPS with the CA the client would use (tests/captured.py has the requests);
- ```text and unlabelled blocks are output or illustration and are not run.
An `<!-- expect: TEXT -->` line after a block requires TEXT in its output. The stack's address, CA
and instances replace the defaults the pages use (localhost:8443, nginx/certs/ca.crt). Each page
starts with OPENAI_BASE_URL, KEYSTILE_CA, KEYSTILE_URL and KEYSTILE_MASTER_KEY set, as after
docs/clients.md's set-up, and runs in its own directory, which is also its HOME (files it writes go
there)."""

from __future__ import annotations

import json
import os
import re
import shlex
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from .captured import (CLAUDE_CODE_ANSWER, CLAUDE_CODE_BODY, CLAUDE_CODE_HEADERS, CLAUDE_CODE_PATH, CODEX_ANSWER,
                       CODEX_BODY, CODEX_HEADERS)
from .stack import ROOT, Stack, require_tool

DOCS = ROOT / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md"))
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*\n(?:<!-- expect: (.*?) -->\n)?", re.M | re.S)


@dataclass
class Block:
    lang: str
    tag: str
    code: str
    expect: str | None
    line: int


def blocks(page: str) -> list[Block]:
    text = (DOCS / page).read_text()
    found = []
    for m in FENCE.finditer(text):
        info = m.group(1).split()
        found.append(Block(info[0] if info else "", info[1] if len(info) > 1 else "", m.group(2), m.group(3),
                           text.count("\n", 0, m.start()) + 1))
    return found


def test_pages_exist_and_every_block_is_known():
    assert {"clients.md", "continue.md", "security.md", "models.md", "operations.md"} <= set(PAGES)
    known = {("bash", ""), ("bash", "docker"), ("bash", "claude-code"), ("bash", "codex"), ("python", ""), ("js", ""), ("yaml", "config"),
             ("yaml", "continue"), ("text", "")}
    for page in PAGES:
        for b in blocks(page):
            assert (b.lang, b.tag) in known, f"docs/{page}:{b.line}: unknown block ```{b.lang} {b.tag}"


class Reader:
    """One page's shell session against the stack."""

    def __init__(self, stack: Stack, workdir: Path):
        self.stack = stack
        self.dir = workdir
        for name in ("scripts", "nginx", "config.yaml", ".venv"):
            (workdir / name).symlink_to(ROOT / name)
        (workdir / "node_modules").symlink_to(ROOT / "tests" / "clients" / "node_modules")
        (workdir / ".env").write_text(f"KEYSTILE_MASTER_KEY={stack.master_key}\n")
        self.env_file = workdir / ".session-env"
        env = {**stack.env, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
               "OPENAI_BASE_URL": f"{stack.base}/v1", "KEYSTILE_CA": stack.ca,
               "KEYSTILE_URL": stack.instance_url(1), "KEYSTILE_MASTER_KEY": stack.master_key,
               "HOME": str(workdir)}
        env.pop("OPENAI_API_KEY", None)
        self.env = env
        self.count = 0

    def localise(self, code: str) -> str:
        code = code.replace("localhost:8443", f"localhost:{self.stack.https_port}")
        return re.sub(r"[^\s\"'=]*nginx/certs/ca\.crt", self.stack.ca, code)

    def run(self, b: Block) -> str:
        self.count += 1
        code = self.localise(b.code)
        if b.tag == "docker":  # the docker lines are checked, the others run
            checked = check_docker_commands(code)
            code = "\n".join(": " + line if line.startswith("docker ") else line for line in code.splitlines())
            return checked + self.run(Block("bash", "", code, None, b.line))
        if b.lang == "bash":
            script = self.dir / f"block-{self.count}.sh"
            script.write_text(f"set -euo pipefail\n{code}\nexport -p > {shlex.quote(str(self.env_file))}\n")
            out = self._exec(["bash", str(script)], b)
            self.env = _exported(self.env_file.read_text())
            if b.tag == "claude-code":
                out += replay_claude_code(self.env)
            elif b.tag == "codex":
                out += replay_codex(self.env)
            return out
        if b.lang == "python":
            script = self.dir / f"block-{self.count}.py"
            script.write_text(code)
            return self._exec([sys.executable, str(script)], b)
        if b.lang == "js":
            require_tool("node", "apt-get install -y nodejs npm")
            assert (ROOT / "tests/clients/node_modules/openai").exists(), "run scripts/test-tools.sh (make test does)"
            script = self.dir / f"block-{self.count}.mjs"
            script.write_text(code)
            return self._exec(["node", str(script)], b)
        if b.lang == "yaml" and b.tag == "config":
            return check_config(code, self.dir / f"config-{self.count}.yaml")
        if b.lang == "yaml" and b.tag == "continue":
            return drive_continue(code, self.env)
        return ""

    def _exec(self, argv: list[str], b: Block) -> str:
        done = subprocess.run(argv, cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"block at line {b.line} failed ({done.returncode}):\n{b.code}\n" \
                                     f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        return done.stdout + done.stderr


def _exported(text: str) -> dict[str, str]:
    """`export -p` output back into a mapping (bash quotes values as $'...' or "...")."""
    env = {}
    for line in text.splitlines():
        m = re.match(r'declare -x ([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$', line)
        if m and m.group(2) is not None:
            env[m.group(1)] = subprocess.run(["bash", "-c", f"printf %s {m.group(2)}"], capture_output=True,
                                             text=True).stdout if m.group(2).startswith("$'") else \
                yaml.safe_load(m.group(2)) if m.group(2).startswith('"') else m.group(2)
    return {k: str(v) for k, v in env.items()}


def check_config(code: str, path: Path) -> str:
    from proxy.services import check_deployments
    from proxy.settings import load_config

    needed = re.findall(r"os\.environ/([A-Za-z_]\w*)", code)
    saved = {n: os.environ.get(n) for n in needed}
    os.environ.update({n: f"docs-check-{n.lower()}" for n in needed})
    try:
        path.write_text(code)
        config = load_config(path)  # raises ConfigError naming the entry and field
        check_deployments(config)
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
    assert config.model_list or config.keystile_settings.model_fields_set
    return "valid"


def drive_continue(code: str, env: dict[str, str]) -> str:
    """A Continue config.yaml: its structure, then its models' requests the way Continue sends them."""
    config = yaml.safe_load(code)
    assert config["schema"] == "v1" and config["name"] and config["version"]
    roles = {role for m in config["models"] for role in m["roles"]}
    assert {"chat", "autocomplete", "embed"} <= roles
    # Continue resolves ${{ secrets.NAME }} from ~/.continue/.env
    secrets_file = Path(env["HOME"]) / ".continue" / ".env"
    secrets = dict(line.split("=", 1) for line in secrets_file.read_text().splitlines() if "=" in line)
    out = []
    for model in config["models"]:
        assert model["provider"] == "openai"
        assert model["apiBase"].startswith("https://") and model["apiBase"].endswith("/v1")
        secret = re.fullmatch(r"\$\{\{ secrets\.([A-Z_]+) \}\}", model["apiKey"])
        assert secret, "the key belongs in Continue's secrets, not in the file"
        key = secrets[secret.group(1)]
        ca = model["requestOptions"]["caBundlePath"]
        assert Path(ca).is_file(), ca
        tls = ssl.create_default_context(cafile=ca)
        with httpx.Client(base_url=model["apiBase"], verify=tls, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as c:
            if "chat" in model["roles"]:
                with c.stream("POST", "/chat/completions", json={
                        "model": model["model"], "stream": True,
                        "messages": [{"role": "user", "content": "Explain this function"}]}) as r:
                    assert r.status_code == 200, r.read()
                    events = [line for line in r.iter_lines() if line.startswith("data: ")]
                assert events[-1] == "data: [DONE]" and len(events) > 2
            if "autocomplete" in model["roles"]:
                max_tokens = (model.get("defaultCompletionOptions") or {}).get("maxTokens", 64)
                with c.stream("POST", "/completions", json={
                        "model": model["model"], "stream": True, "prompt": "def add(a, b):\n    ",
                        "suffix": "\n\nprint(add(1, 2))", "max_tokens": max_tokens, "temperature": 0.01}) as r:
                    assert r.status_code == 200, r.read()
                    assert [line for line in r.iter_lines() if line.startswith("data: ")][-1] == "data: [DONE]"
            if "embed" in model["roles"]:
                r = c.post("/embeddings", json={"model": model["model"], "input": ["def add(a, b):", "return a + b"]})
                assert r.status_code == 200, r.text
                assert len(r.json()["data"]) == 2
        out.append(f"{model['name']}: ok")
    return "\n".join(out)


def _path(env: dict[str, str], value: str) -> str:
    """A path as the client resolves it: relative to the directory it was started in."""
    return value if os.path.isabs(value) else str(Path(env["HOME"]) / value)


def replay_claude_code(env: dict[str, str]) -> str:
    """Claude Code's requests with its variables: ANTHROPIC_BASE_URL (the gateway root), the key as
    Bearer (ANTHROPIC_AUTH_TOKEN) or x-api-key (ANTHROPIC_API_KEY), its two models, Node's CA."""
    base = env["ANTHROPIC_BASE_URL"].rstrip("/")
    assert base.startswith("https://") and not base.endswith("/v1"), base
    auth = {"Authorization": f"Bearer {env['ANTHROPIC_AUTH_TOKEN']}"} if env.get("ANTHROPIC_AUTH_TOKEN") \
        else {"x-api-key": env["ANTHROPIC_API_KEY"]}
    tls = ssl.create_default_context(cafile=_path(env, env["NODE_EXTRA_CA_CERTS"]))
    headers = {**CLAUDE_CODE_HEADERS, **auth}
    with httpx.Client(base_url=base, verify=tls, timeout=60, headers=headers) as c:
        body = {**CLAUDE_CODE_BODY, "model": env["ANTHROPIC_MODEL"]}
        with c.stream("POST", CLAUDE_CODE_PATH, json=body) as r:
            assert r.status_code == 200, r.read()
            lines = list(r.iter_lines())
        text = "".join(json.loads(line[6:])["delta"].get("text", "") for line in lines
                       if line.startswith("data: ") and '"content_block_delta"' in line)
        assert text == CLAUDE_CODE_ANSWER and "event: message_stop" in lines, lines
        small = c.post(CLAUDE_CODE_PATH, json={"model": env["ANTHROPIC_SMALL_FAST_MODEL"], "max_tokens": 512,
                                               "messages": [{"role": "user", "content": "quota"}]})
        assert small.status_code == 200 and small.json()["type"] == "message", small.text
        counted = c.post("/v1/messages/count_tokens?beta=true",
                         json={k: body[k] for k in ("model", "system", "messages", "tools")})
        assert counted.status_code == 200 and counted.json()["input_tokens"] > 10, counted.text
    return "Claude Code: ok"


def replay_codex(env: dict[str, str]) -> str:
    """Codex CLI's request with ~/.codex/config.toml: its model and provider (base_url, env_key,
    wire_api), the key from the env_key variable, the CA from CODEX_CA_CERTIFICATE or SSL_CERT_FILE."""
    import tomllib

    config = tomllib.loads((Path(env["HOME"]) / ".codex" / "config.toml").read_text())
    provider = config["model_providers"][config["model_provider"]]
    assert provider["wire_api"] == "responses" and provider["base_url"].startswith("https://"), provider
    ca = env.get("CODEX_CA_CERTIFICATE") or env["SSL_CERT_FILE"]
    tls = ssl.create_default_context(cafile=_path(env, ca))
    headers = {**CODEX_HEADERS, "Authorization": f"Bearer {env[provider['env_key']]}"}
    with httpx.Client(base_url=provider["base_url"].rstrip("/"), verify=tls, timeout=60, headers=headers) as c:
        with c.stream("POST", "/responses", json={**CODEX_BODY, "model": config["model"]}) as r:
            assert r.status_code == 200, r.read()
            data = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1]["type"] == "response.completed", data[-1]
    text = "".join(d["delta"] for d in data if d["type"] == "response.output_text.delta")
    assert text == CODEX_ANSWER, text
    return "Codex CLI: ok"


def check_docker_commands(code: str) -> str:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = set(compose["services"])
    profiles = {p for s in compose["services"].values() for p in s.get("profiles", [])}
    for line in code.splitlines():
        words = line.split()
        if words[:2] != ["docker", "compose"]:
            continue
        for i, w in enumerate(words):
            if w == "--profile":
                assert words[i + 1] in profiles, line
            if w == "--scale":
                assert words[i + 1].split("=")[0] in services, line
        named = [w for w in words[3:] if not w.startswith("-") and "=" not in w and w in services | {"keystile"}]
        assert all(n in services for n in named), line
    return "checked against docker-compose.yml"


@pytest.mark.parametrize("page", PAGES)
def test_page(page: str, stack: Stack, tmp_path: Path):
    reader = Reader(stack, tmp_path)
    for b in blocks(page):
        out = reader.run(b)
        if b.expect is not None:
            assert b.expect in out, f"docs/{page}:{b.line}: expected {b.expect!r} in the output of\n{b.code}\n" \
                                    f"--- output\n{out}"
    # A page may change the master key (security.md rotates it): the stack follows.
    if reader.env.get("KEYSTILE_MASTER_KEY", stack.master_key) != stack.master_key:
        stack.master_key = stack.env["KEYSTILE_MASTER_KEY"] = reader.env["KEYSTILE_MASTER_KEY"]
