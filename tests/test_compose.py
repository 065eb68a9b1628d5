"""docker-compose.yml and the Dockerfile, checked for structure (docker cannot run where the tests
run): the services and their order, health checks, volumes and ports, secrets from .env, and that
every environment variable Keystile's code reads is passed to the containers that run it. The
variables are found by scanning the code, so a new setting fails this test until compose passes it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]

# Read by the code, but not settings of a deployment (with where they are read, so that this list
# fails when the code stops reading them).
NOT_DEPLOYMENT = {
    "COLUMNS": "proxy/cli/output.py",  # the terminal width for the CLI's tables
    # Set by `keystile serve --workers N` for its workers' metrics; compose runs one worker a container.
    "PROMETHEUS_MULTIPROC_DIR": "proxy/cli/__init__.py",
}

_READS = [
    re.compile(r"""os\.environ\.get\(\s*["']([A-Z][A-Z0-9_]*)["']"""),
    re.compile(r"""os\.getenv\(\s*["']([A-Z][A-Z0-9_]*)["']"""),
    re.compile(r"""os\.environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\](?!\s*=[^=])"""),
    re.compile(r"""["']([A-Z][A-Z0-9_]*)["']\s+(?:not\s+)?in\s+os\.environ"""),
    re.compile(r"""envvar\s*=\s*["']([A-Z][A-Z0-9_]*)["']"""),
]


def _settings_fields(tree: ast.Module) -> set[str]:
    """Environment names of pydantic-settings classes (BaseSettings subclasses): field names,
    upper-cased, with the class's env_prefix."""
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        if not any((isinstance(b, ast.Name) and b.id == "BaseSettings") or
                   (isinstance(b, ast.Attribute) and b.attr == "BaseSettings") for b in node.bases):
            continue
        prefix = ""
        for stmt in node.body:
            if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "model_config" for t in stmt.targets):
                for kw in getattr(stmt.value, "keywords", []):
                    if kw.arg == "env_prefix" and isinstance(kw.value, ast.Constant):
                        prefix = kw.value.value
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id != "model_config":
                names.add((prefix + stmt.target.id).upper())
    return names


def variables_read_by_code() -> dict[str, str]:
    """Every environment variable proxy/ and backends/ read -> the first file reading it."""
    found: dict[str, str] = {}
    for path in sorted([*(ROOT / "proxy").rglob("*.py"), *(ROOT / "backends").rglob("*.py")]):
        text = path.read_text()
        names = {m.group(1) for rx in _READS for m in rx.finditer(text)} | _settings_fields(ast.parse(text))
        for name in names:
            found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def variables_in_config(path: Path) -> set[str]:
    """`os.environ/VAR` references in a config.yaml, commented examples included (they are meant to
    be uncommented)."""
    line = re.compile(r"^\s*(?:#\s*)?[A-Za-z_][\w-]*:\s*os\.environ/([A-Za-z_]\w*)\s*(?:#.*)?$", re.M)
    return set(line.findall(path.read_text()))


def env_of(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_the_scan_finds_what_the_code_reads():
    found = variables_read_by_code()
    for name in ("KEYSTILE_MASTER_KEY", "KEYSTILE_CONFIG", "DATABASE_URL", "REDIS_URL", "KEYSTILE_TRUSTED_PROXIES",
                 "KEYSTILE_URL"):
        assert name in found, sorted(found)
    for name, where in NOT_DEPLOYMENT.items():
        assert found.get(name) == where, f"{name} is no longer read in {where}: drop it from NOT_DEPLOYMENT"


@pytest.mark.parametrize("service", ["keystile", "migrate"])
def test_every_variable_the_code_reads_is_passed(service: str):
    env = env_of(service)
    wanted = {n: w for n, w in variables_read_by_code().items() if n not in NOT_DEPLOYMENT}
    missing = {n: w for n, w in wanted.items() if n not in env}
    assert not missing, f"{service} does not pass {missing} (variable: file reading it)"
    mounted = [v.split(":")[0] for v in SERVICES["keystile"].get("volumes", []) if v.endswith(":/app/config.yaml:ro")]
    assert mounted, "keystile must mount a config.yaml at /app/config.yaml"
    from_config = variables_in_config(ROOT / mounted[0])
    assert from_config <= set(env), f"config.yaml reads {from_config - set(env)} that {service} does not pass"
    assert env["KEYSTILE_CONFIG"] == "/app/config.yaml"


def test_secrets_come_from_env_file_and_are_required():
    text = (ROOT / "docker-compose.yml").read_text()
    for name in ("KEYSTILE_MASTER_KEY", "POSTGRES_PASSWORD"):
        assert re.search(r"\$\{" + name + r":\?[^}]+\}", text), f"{name} must come from .env and be required"
    env = env_of("keystile")
    assert env["KEYSTILE_MASTER_KEY"].startswith("${KEYSTILE_MASTER_KEY:?")
    assert "${POSTGRES_PASSWORD:?" in env["DATABASE_URL"] and env["DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert not re.search(r"sk-[A-Za-z0-9_-]{20,}", text), "a literal key in docker-compose.yml"


def test_services_and_their_order():
    assert {"keystile", "migrate", "postgres", "redis", "nginx", "vllm"} <= set(SERVICES)
    keystile = SERVICES["keystile"]
    assert keystile["deploy"]["replicas"] >= 2
    assert keystile["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert keystile["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert keystile["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "ports" not in keystile, "instances are reached through nginx only"
    assert any("/health/liveliness" in part for part in keystile["healthcheck"]["test"])
    assert "4000" in keystile["command"]
    # the usage journal (in the image's working directory) outlives a container
    workdir = re.findall(r"^WORKDIR\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)[-1]
    journal = next(v for v in keystile["volumes"] if v.endswith(f":{workdir}"))
    assert journal.split(":")[0] in COMPOSE["volumes"]

    migrate = SERVICES["migrate"]
    assert migrate["command"] == ["keystile", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["image"] == keystile["image"]

    postgres = SERVICES["postgres"]
    volume = next(v for v in postgres["volumes"] if v.endswith(":/var/lib/postgresql/data"))
    assert volume.split(":")[0] in COMPOSE["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "redis-cli" in SERVICES["redis"]["healthcheck"]["test"]

    nginx = SERVICES["nginx"]
    assert {"80:80", "443:443"} <= set(nginx["ports"])
    assert nginx["depends_on"]["keystile"]["condition"] == "service_healthy"
    assert "gpu" in SERVICES["vllm"]["profiles"]
    assert all("profiles" not in s for name, s in SERVICES.items() if name != "vllm")


def test_nginx_mounts_match_its_configuration():
    volumes = dict(v.rsplit(":", 1)[0].split(":", 1) for v in SERVICES["nginx"]["volumes"])
    conf_target = volumes["./nginx/keystile.conf"]
    assert conf_target.startswith("/etc/nginx/conf.d/")
    conf = (ROOT / "nginx" / "keystile.conf").read_text()
    certs = volumes["./nginx/certs"]
    assert f"ssl_certificate     {certs}/server.crt;" in conf and f"ssl_certificate_key {certs}/server.key;" in conf
    # the upstream names the keystile service on the port it serves
    assert re.search(r"^\s*server keystile:4000 ", conf, re.M)
    # nginx's own address is the one proxy Keystile believes
    trusted = env_of("keystile")["KEYSTILE_TRUSTED_PROXIES"]
    assert SERVICES["nginx"]["networks"]["edge"]["ipv4_address"] == trusted
    assert "edge" in SERVICES["keystile"]["networks"]


def test_dockerfile_is_multi_stage_slim_non_root_and_builds_llama_portably():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2
    assert "slim" in text.split("ARG PYTHON_IMAGE=", 1)[1].split("\n", 1)[0]
    runtime = text[text.rindex("\nFROM "):]
    assert "build-essential" not in runtime and "cmake" not in runtime
    user = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "scripts/llama-wheel.sh" in text
    assert "/health/liveliness" in runtime
    for source in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+$", text, re.M):
        for item in source.split():
            assert (ROOT / item).exists(), f"Dockerfile copies {item}, which does not exist"
