"""Azure OpenAI's paths, as LiteLLM serves them, so the openai SDK's `AzureOpenAI` client works with
`azure_endpoint` = Keystile's root and the key in `api-key`:

    POST /openai/deployments/{model}/chat/completions?api-version=…   (also completions, embeddings)

The deployment in the path is the model (it wins over a `model` in the body, as in LiteLLM);
`api-version` is accepted and not checked (Keystile answers in OpenAI's current shapes, which
Azure's API versions share). Everything else is the OpenAI dialect's: bodies validated and relayed
as they are, the same answers, chunks and error envelope."""

from __future__ import annotations

from ..core import Gateway
from ..domain import Principal
from .base import Endpoint, Incoming, Reply, read_json
from .openai import OpenAI


class Azure(OpenAI):
    name = "azure"
    prefixes = ("/openai/deployments/{model}",)

    async def handle(self, gateway: Gateway, principal: Principal, endpoint: Endpoint, incoming: Incoming) -> Reply:
        body = await read_json(gateway, principal, incoming)
        body["model"] = incoming.params["model"]
        return await self.serve(gateway, principal, endpoint, incoming, body)


DIALECT = Azure()
