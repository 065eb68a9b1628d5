"""The model's own tokenizer: `POST /v1/tokenize` (`{model, text}` or `{model, messages}`, the
messages rendered with the model's chat template) -> `{tokens, token_strings, token_count}`, and
`POST /v1/detokenize` (`{model, tokens}`) -> `{text}`. Also at the root (`/tokenize`,
`/detokenize`), where vLLM serves them, with vLLM's request fields (`prompt`,
`add_special_tokens`) and answer fields (`count`, `max_model_len`, `prompt`) alongside.

`model` may be left out, as the 004 guide's curl does (then `keystile_settings.default_model`, else
the first in model_list). Backends answer in vLLM's shapes (backends/base.py: `encode`,
`decode`): llama.cpp's tokenizer for local models, an upstream's /tokenize (vLLM), tiktoken for
OpenAI models; any other backend is a clear 400. Limits count the request (rpm), no tokens are
billed; each call leaves a usage record like any other."""

from __future__ import annotations

import orjson

from ..core import Answer, Inference
from ..errors import UpstreamFailed
from ..protocol.tokenize import DetokenizeRequest, TokenizeRequest
from .base import Dialect, Endpoint, default_model, validate


class Tokenize(Dialect):
    name = "tokenize"
    prefixes = ("/v1", "")
    endpoints = (
        Endpoint("/tokenize", "tokenize", TokenizeRequest, "Text or messages to the model's token ids"),
        Endpoint("/detokenize", "detokenize", DetokenizeRequest, "Token ids back to text"),
    )

    def __init__(self) -> None:
        self.default_model = ""

    async def start(self, services) -> None:
        self.default_model = default_model(services)

    def parse(self, endpoint: Endpoint, body: dict) -> Inference:
        validate(endpoint.model, body)
        model = body.get("model") or self.default_model
        if endpoint.operation == "detokenize":
            return Inference({"model": model, "tokens": body["tokens"]})
        request = {k: v for k, v in body.items() if k != "text" and v is not None}  # `null`s mean "not sent"
        request["model"] = model
        if body.get("messages") is None:
            request["prompt"] = body["prompt"] if body.get("prompt") is not None else body["text"]
        return Inference(request)

    def render(self, endpoint: Endpoint, request: Inference, answer: Answer) -> bytes:
        data = orjson.loads(answer.body)
        model = request.body["model"]
        if endpoint.operation == "detokenize":
            return orjson.dumps({"model": model, "text": data["prompt"], "prompt": data["prompt"]})
        tokens, pieces = data["tokens"], data.get("token_strs")
        if pieces is not None and len(pieces) != len(tokens):
            raise UpstreamFailed("the upstream's tokenizer gave a different number of token strings than tokens")
        return orjson.dumps({"model": model, "tokens": tokens, "token_strings": pieces, "token_count": len(tokens),
                             "count": len(tokens), "max_model_len": data.get("max_model_len")})


DIALECT = Tokenize
