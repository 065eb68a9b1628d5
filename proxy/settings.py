"""Settings: environment (pydantic-settings) plus config.yaml (LiteLLM's model_list format).

A bad file stops startup with a message naming the file, the entry and the field.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """config.yaml or the environment is unusable; the message says where."""


class LiteLLMParams(BaseModel):
    """A deployment's `litellm_params`. Unknown keys are kept: they are passed to the backend."""

    model_config = ConfigDict(extra="allow")

    model: str
    api_base: str | None = None
    api_key: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    stream_timeout: float | None = Field(default=None, gt=0)
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    weight: float = Field(default=1.0, gt=0)
    max_retries: int | None = Field(default=None, ge=0)

    @field_validator("model")
    @classmethod
    def _provider_prefix(cls, v: str) -> str:
        if "/" not in v:
            raise ValueError("must be 'provider/name', e.g. 'openai/gpt-4o' or 'llamacpp/path/to/model.gguf'")
        return v

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def upstream_model(self) -> str:
        return self.model.split("/", 1)[1]

    def extra_params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    model_name: str = Field(min_length=1)
    litellm_params: LiteLLMParams
    model_info: ModelInfo = Field(default_factory=ModelInfo)
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)


# JWT algorithm -> the JWK key type it may be verified with (asymmetric only).
KEY_TYPES = {"RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "ES256": "EC", "ES384": "EC", "ES512": "EC"}


class JWTSettings(BaseModel):
    """`keystile_settings.jwt`: which issuer's tokens are accepted and how claims map to callers."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks_file: Path | None = None
    jwks_url: str | None = Field(default=None, pattern=r"^https?://")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], min_length=1)
    user_id_claim: str = Field(default="sub", min_length=1)
    team_id_claim: str | None = None
    role_claim: str | None = None
    admin_roles: list[str] = Field(default_factory=list)
    models_claim: str | None = None
    leeway_s: int = Field(default=30, ge=0, le=600)
    jwks_cache_s: float = Field(default=300.0, gt=0)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in KEY_TYPES]
        if bad:
            raise ValueError(f"not allowed: {', '.join(bad)}; use asymmetric ones ({', '.join(KEY_TYPES)})")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _one_key_source(self) -> JWTSettings:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("set exactly one of jwks_file or jwks_url")
        return self



def parse_network(text: str) -> str:
    """An address or CIDR network, normalised ('10.0.0.0/8', '127.0.0.1/32'); ValueError names it."""
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ValueError(f"'{text.strip()}' is not an IP address or CIDR network") from None


class JobSettings(BaseModel):
    """`keystile_settings.jobs`: the async job API (/run, /status/{id}, /v2/{endpoint_id}/...)."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(default=4, ge=1, le=256, description="jobs run at once by this process")
    keep_finished_s: float = Field(default=1800.0, gt=0, description="a finished job's result is kept this long")
    runsync_wait_s: float = Field(default=90.0, ge=0, le=3600, description="/runsync answers like /run after this")
    max_queued: int = Field(default=10000, ge=1, description="queued jobs per key before /run answers 429")
    endpoints: dict[str, str] = Field(default_factory=dict,
                                      description="endpoint id in /v2/{endpoint_id}/... -> model name")


class KeystileSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_request_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    request_timeout: float = Field(default=600.0, gt=0, description="default upstream timeout, seconds")
    connect_timeout: float = Field(default=10.0, gt=0)
    num_retries: int = Field(default=2, ge=0)
    allowed_fails: int = Field(default=3, ge=0, description="failures within a minute before a cooldown")
    cooldown_time: float = Field(default=30.0, ge=0)
    fallbacks: list[dict[str, list[str]]] = Field(default_factory=list)
    routing_strategy: str = Field(default="simple-shuffle", pattern="^(simple-shuffle|least-busy)$")
    key_cache_ttl: float = Field(default=300.0, gt=0, description="a cached key record is reloaded for its spend "
                                 "in the background after half of this, before use after all of it (seconds); "
                                 "changes reach caches within a second through the change feed, not through this")
    negative_cache_ttl: float = Field(default=5.0, ge=0)
    usage_journal: Path | None = Field(default=None, description="directory of the usage journal; default beside "
                                       "a SQLite database (keystile.db.usage/), else ./keystile-usage/<database>/")
    auth_failures_per_minute: int = Field(default=30, ge=1, description="per client address, then 429")
    max_header_bytes: int = Field(default=64 * 1024, ge=4096, description="request line and headers; more: 431")
    header_timeout: float = Field(default=10.0, gt=0, description="seconds for a request's head to arrive; then 408")
    body_timeout: float = Field(default=30.0, gt=0, description="seconds a request body may pause; then closed")
    stream_keepalive: float = Field(default=5.0, ge=0, description=(
        "seconds a stream may wait for its first chunk (a long prefill) before the answer is committed as "
        "200 SSE with a keep-alive every as many seconds until it starts; 0: wait without one"))
    jwt: JWTSettings | None = None
    default_model: str | None = Field(default=None, min_length=1,
                                      description="model of requests that name none (/generate, /run); "
                                                  "default: the first in model_list")
    jobs: JobSettings = Field(default_factory=lambda: JobSettings())
    metrics_token: str | None = Field(default=None, min_length=16, description=(
        "bearer token that may read /metrics (besides the master key and admin keys); env "
        "KEYSTILE_METRICS_TOKEN"))
    log_requests: bool = Field(default=True, description="one JSON line per request on stdout; env KEYSTILE_LOG_REQUESTS")
    log_prompts: bool = Field(default=False, description="put the prompt's text into each request's log line; env "
                                                         "KEYSTILE_LOG_PROMPTS")
    model_poll_interval: float = Field(default=0.5, gt=0, le=60, description=(
        "seconds between looks at the database for models added, changed or removed through the API "
        "on another instance (with Redis they arrive at once)"))

    trusted_proxies: list[str] = Field(default_factory=list, description=(
        "addresses or CIDR networks of reverse proxies (nginx) whose X-Forwarded-For is believed; "
        "from anyone else the connection's own address is the client's"))

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        return [parse_network(item) for item in v]


class RouterSettings(BaseModel):
    """The subset of LiteLLM's `router_settings` Keystile honours; the rest is accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    num_retries: int | None = Field(default=None, ge=0)
    allowed_fails: int | None = Field(default=None, ge=0)
    cooldown_time: float | None = Field(default=None, ge=0)
    routing_strategy: str | None = None
    fallbacks: list[dict[str, list[str]]] | None = None


class FileConfig(BaseModel):
    """The whole config.yaml. LiteLLM's other sections are accepted so its files work unchanged."""

    model_config = ConfigDict(extra="allow")

    model_list: list[ModelEntry] = Field(default_factory=list)
    keystile_settings: KeystileSettings = Field(default_factory=KeystileSettings)
    router_settings: RouterSettings = Field(default_factory=RouterSettings)
    litellm_settings: dict[str, Any] = Field(default_factory=dict)
    general_settings: dict[str, Any] = Field(default_factory=dict)

    def effective(self) -> KeystileSettings:
        """keystile_settings with LiteLLM's router_settings/litellm_settings applied where set."""
        merged = self.keystile_settings.model_copy()
        rs = self.router_settings
        for name in ("num_retries", "allowed_fails", "cooldown_time", "fallbacks"):
            value = getattr(rs, name)
            if value is None:
                value = self.litellm_settings.get(name)
            if value is not None and name not in self.keystile_settings.model_fields_set:
                setattr(merged, name, value)
        if rs.routing_strategy in ("simple-shuffle", "least-busy"):
            merged.routing_strategy = rs.routing_strategy
        return merged


SERVER_LIMITS = ("max_request_bytes", "max_header_bytes", "header_timeout", "body_timeout", "stream_keepalive")
"""The HTTP server's limits in keystile_settings that the environment may set too (KEYSTILE_<NAME>):
they belong to where the gateway runs (behind nginx or not, its proxies' idle timeouts) more than
to the model map."""
FROM_ENVIRONMENT = (*SERVER_LIMITS, "metrics_token", "log_requests", "log_prompts")
"""Every keystile_settings field the environment may set (KEYSTILE_<NAME>): the server limits, and
the scrape token and log switches (proxy/observe), which belong to the deployment too."""


class Settings(BaseSettings):
    """Process settings from the environment (and .env)."""

    model_config = SettingsConfigDict(env_prefix="", env_file=".env", extra="ignore")

    keystile_master_key: str | None = None
    keystile_salt_key: str | None = Field(default=None, description="encrypts the credentials of models added "
                                          "through /model/new (default: the master key)")
    keystile_config: Path = Path("config.yaml")
    database_url: str = "sqlite+aiosqlite:///./keystile.db"
    redis_url: str | None = None
    keystile_trusted_proxies: str = Field(default="", description="comma-separated, added to keystile_settings.trusted_proxies")
    # FROM_ENVIRONMENT (the server limits, the metrics token, the log switches): set and not empty,
    # they win over config.yaml's keystile_settings.
    # Text here, checked by apply() against keystile_settings' own bounds, so a bad value is named.
    keystile_max_request_bytes: str = ""
    keystile_max_header_bytes: str = ""
    keystile_header_timeout: str = ""
    keystile_body_timeout: str = ""
    keystile_stream_keepalive: str = ""
    keystile_metrics_token: str = ""
    keystile_log_requests: str = ""
    keystile_log_prompts: str = ""
    otel_exporter_otlp_endpoint: str = Field(default="", description=(
        "OpenTelemetry collector (OTLP over HTTP, e.g. http://collector:4318): set, each request is traced"))

    def apply(self, config: FileConfig) -> FileConfig:
        """`config` with the settings the environment sets (FROM_ENVIRONMENT) put over its keystile_settings."""
        given = {name: raw.strip() for name in FROM_ENVIRONMENT if (raw := getattr(self, f"keystile_{name}")).strip()}
        if not given:
            return config
        try:
            checked = KeystileSettings.model_validate(given)
        except ValidationError as exc:
            raise ConfigError("; ".join(f"KEYSTILE_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                                        for e in exc.errors())) from exc
        options = config.keystile_settings.model_copy(update={name: getattr(checked, name) for name in given})
        return config.model_copy(update={"keystile_settings": options})

    def trusted_proxies(self, config: FileConfig) -> list[str]:
        """The proxies whose X-Forwarded-For is believed: the environment's and the file's."""
        try:
            from_env = [parse_network(item) for item in self.keystile_trusted_proxies.split(",") if item.strip()]
        except ValueError as exc:
            raise ConfigError(f"KEYSTILE_TRUSTED_PROXIES: {exc}") from exc
        return list(dict.fromkeys(from_env + config.keystile_settings.trusted_proxies))



def resolve_env_refs(value: Any, where: str) -> Any:
    """Replace LiteLLM's `os.environ/VAR` strings with the variable's value."""
    if isinstance(value, str) and value.startswith("os.environ/"):
        var = value.removeprefix("os.environ/")
        if var not in os.environ:
            raise ConfigError(f"{where}: environment variable {var} is not set")
        return os.environ[var]
    if isinstance(value, dict):
        return {k: resolve_env_refs(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env_refs(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _describe(err: ValidationError, raw: dict) -> str:
    lines = []
    for e in err.errors():
        loc = e["loc"]
        where = ".".join(str(p) for p in loc)
        if len(loc) >= 2 and loc[0] == "model_list" and isinstance(loc[1], int):
            entries = raw.get("model_list") or []
            name = entries[loc[1]].get("model_name") if loc[1] < len(entries) and isinstance(entries[loc[1]], dict) else None
            if name:
                where = f"model_list[{loc[1]}] (model_name: {name})." + ".".join(str(p) for p in loc[2:])
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def load_config(path: Path) -> FileConfig:
    """Read and validate config.yaml; raise ConfigError naming the file, entry and field."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping with a model_list")
    raw = resolve_env_refs(raw, str(path))
    try:
        config = FileConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid configuration\n{_describe(exc, raw)}") from exc
    return config
