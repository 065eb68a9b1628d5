"""The single-checkpoint inference server's API (seed 002): `POST /generate`, `GET /info`, `GET /`.

`/generate` is a text completion of `prompt` (the core's `completions`), answered as
`{"prompt", "generated_text" (the prompt and its continuation), "tokens_generated", "model"}`;
`model` may be left out (then `keystile_settings.default_model`, else the first in model_list).
Out-of-range values are a 422 naming the field and its range, as the guide's FastAPI server gave;
errors keep Keystile's envelope plus the `detail` FastAPI clients read. `/info` says what is known
of a model (a local GGUF file's metadata), 503 while it loads; `/` is the overview."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qs

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from backends.router import Deployment

from ..core import Answer, Gateway, Inference
from ..domain import Principal
from ..errors import BadRequest, KeystileError, Unavailable, error_body
from .base import Dialect, Endpoint, Incoming, Reply, default_model

RANGES = {"max_tokens": (1, 2048), "temperature": (0.0, 2.0), "top_k": (1, 32)}


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: StrictStr = Field(description="input text to continue from")
    max_tokens: Annotated[StrictInt, Field(ge=1, le=2048)] = 100
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.8
    top_k: Annotated[StrictInt, Field(ge=1, le=32)] | None = None
    stop_on_newline: StrictBool = False
    model: StrictStr | None = Field(default=None, min_length=1, description="default: the configured default model")


class Invalid(BadRequest):
    """A value out of its range: 422, as FastAPI answers."""

    status = 422


def _invalid(exc: ValidationError) -> Invalid:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    if field in RANGES:
        lo, hi = RANGES[field]
        return Invalid(f"{field} must be between {lo} and {hi} (got {first.get('input')!r})", param=field,
                       code="out_of_range")
    return Invalid(f"{field}: {first['msg']}", param=field)


class Generate(Dialect):
    name = "generate"
    endpoints = (
        Endpoint("/generate", "completions", GenerateRequest, "Generate text from a prompt"),
        Endpoint("/info", None, None, "What is known of the model (?model=name)", method="GET"),
        Endpoint("/", None, None, "Service overview and the list of endpoints", method="GET"),
    )

    def __init__(self) -> None:
        self.default_model = ""

    async def start(self, services) -> None:
        self.default_model = default_model(services)

    def parse(self, endpoint: Endpoint, body: dict) -> Inference:
        try:
            req = GenerateRequest.model_validate(body)
        except ValidationError as exc:
            raise _invalid(exc) from exc
        openai = {"model": req.model or self.default_model, "prompt": req.prompt, "max_tokens": req.max_tokens,
                  "temperature": req.temperature}
        if req.top_k is not None:
            openai["top_k"] = req.top_k
        if req.stop_on_newline:
            openai["stop"] = ["\n"]
        return Inference(openai)

    def render(self, endpoint: Endpoint, request: Inference, answer: Answer) -> bytes:
        data = orjson.loads(answer.body)
        choices = data.get("choices") or [{}]
        prompt = request.body["prompt"]
        return orjson.dumps({"prompt": prompt, "generated_text": prompt + (choices[0].get("text") or ""),
                             "tokens_generated": answer.usage.completion_tokens if answer.usage else 0,
                             "model": data.get("model") or request.body["model"]})

    def error(self, err: KeystileError) -> bytes:
        body = orjson.loads(error_body(err))
        body["detail"] = err.message
        return orjson.dumps(body)

    async def handle(self, gateway: Gateway, principal: Principal, endpoint: Endpoint, incoming: Incoming) -> Reply:
        if endpoint.method == "POST":
            return await super().handle(gateway, principal, endpoint, incoming)
        if endpoint.path == "/info":
            return Reply(body=orjson.dumps(self.info(gateway, principal, _query_model(incoming.query))))
        return Reply(body=orjson.dumps(self.overview(gateway, principal)))

    def info(self, gateway: Gateway, principal: Principal, requested: str | None) -> dict:
        name = gateway.resolve_model(principal, requested or self.default_model)
        deployments = gateway.router.group(name) or []
        ready = [d for d in deployments if _ready(d)]
        if not ready:
            state = deployments[0].backend.status().get("state", "loading") if deployments else "removed"
            raise Unavailable(f"model {name!r} is not loaded ({state}), retry shortly", headers={"Retry-After": "5"})
        d = ready[0]
        found = d.backend.describe()
        info = {"checkpoint": name, "model": name, "upstream": d.upstream, "local": d.backend.local,
                "deployments": len(deployments)}
        if "embedding_size" in found:
            info["model_dim"] = found["embedding_size"]  # the guide's name for it
        return info | found

    def overview(self, gateway: Gateway, principal: Principal) -> dict:
        models = [m for m in gateway.router.groups if principal.may_use(m)]
        loading = [m for m in models if not any(_ready(d) for d in gateway.router.groups.get(m, ()))]
        return {
            "service": "Keystile", "version": "0.1.0", "checkpoint": self.default_model,
            "status": "loading" if self.default_model in loading else "running",
            "models": models, "loading": loading,
            "endpoints": {
                "POST /generate": "Generate text from prompt",
                "GET /info": "Model information (?model=name)",
                "GET /health": "Health of every deployment",
                "GET /health/readiness": "Ready when the database answers and local models are loaded",
                "GET /docs": "Interactive API documentation",
                "GET /v1/models": "The models this key may use",
                "POST /v1/chat/completions": "OpenAI chat completions",
                "POST /v1/completions": "OpenAI text completions",
                "POST /v1/embeddings": "OpenAI embeddings",
                "POST /api/v1/ai/chat/completions": "Chat completions in the {code, msg, data} envelope",
                "POST /run": "Queue an async job; GET /status/{id}, POST /runsync, POST /cancel/{id}",
            },
        }


def _ready(deployment: Deployment) -> bool:
    return deployment.backend.status().get("state") in ("ready", "idle")  # idle: starts on the next request


def _query_model(query: bytes) -> str | None:
    values = parse_qs(query.decode("latin-1")).get("model")
    return values[0] if values else None


DIALECT = Generate
