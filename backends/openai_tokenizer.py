"""OpenAI models' tokenizer (tiktoken) without the network: the encodings' BPE files come from the
copies litellm ships (`litellm/litellm_core_utils/tokenizers/`, named as tiktoken's cache names
them: the SHA-1 of their download URL), checked against tiktoken's own hashes. Nothing is ever
downloaded: a model whose encoding is not among those files (or a missing litellm) is NotSupported.

litellm is located, not imported (its import takes seconds). The encodings are built on first use,
in a thread, once per process: an encoding is immutable and takes about 75 MiB, and every deployment
(each has its own `OpenAITokenizers`) shares it."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import importlib.util
import types
from pathlib import Path
from typing import Any

import orjson

from . import errors
from .base import Completion


def _bundled_dir() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "litellm_core_utils" / "tokenizers"


def _load_bpe(directory: Path):
    """A stand-in for tiktoken.load.load_tiktoken_bpe that reads only `directory`."""
    def load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        path = directory / hashlib.sha1(url.encode()).hexdigest()
        try:
            data = path.read_bytes()
        except OSError:
            raise errors.NotSupported(f"no local copy of {url.rsplit('/', 1)[-1]} (looked in {directory}); "
                                      "this gateway downloads nothing at run time") from None
        if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
            raise errors.NotSupported(f"the local copy of {url.rsplit('/', 1)[-1]} is corrupt ({path})")
        return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}
    return load


@functools.cache
def build_encoding(name: str) -> Any:
    """tiktoken's encoding `name`, its BPE ranks read from litellm's copies. tiktoken's constructor
    for it runs as it is, with its loader replaced by one that cannot download (a copy of the
    function with other globals; tiktoken itself is left untouched)."""
    import tiktoken
    from tiktoken_ext import openai_public

    directory = _bundled_dir()
    constructor = openai_public.ENCODING_CONSTRUCTORS.get(name)
    if directory is None or constructor is None:
        raise errors.NotSupported(f"no local tiktoken encoding {name!r}")
    offline = types.FunctionType(constructor.__code__, {**constructor.__globals__, "load_tiktoken_bpe": _load_bpe(directory)})
    return tiktoken.Encoding(**offline())


class OpenAITokenizers:
    """The tiktoken encodings of OpenAI models, by model name, built when first asked for."""

    def __init__(self) -> None:
        self._encodings: dict[str, Any] = {}

    @staticmethod
    def knows(model: str) -> bool:
        """Whether `model` is an OpenAI model tiktoken has an encoding for."""
        from tiktoken.model import encoding_name_for_model

        try:
            encoding_name_for_model(model)
            return True
        except KeyError:
            return False

    async def encoding(self, model: str) -> Any:
        from tiktoken.model import encoding_name_for_model

        try:
            name = encoding_name_for_model(model)
        except KeyError:
            raise errors.NotSupported(f"{model}: no tokenizer is known for this model") from None
        found = self._encodings.get(name)
        if found is None:
            found = self._encodings[name] = await asyncio.to_thread(build_encoding, name)
        return found

    async def encode(self, model: str, body: dict) -> Completion:
        """vLLM's /tokenize answer for a text; a chat has no published rendering for OpenAI models."""
        if body.get("messages") is not None:
            raise errors.NotSupported(f"{model}: OpenAI does not publish how its chat models render messages "
                                      "into tokens; tokenize text instead")
        encoding = await self.encoding(model)
        tokens = encoding.encode(str(body.get("prompt") or ""), allowed_special="all")
        pieces = [encoding.decode_single_token_bytes(t).decode("utf-8", errors="replace") for t in tokens]
        return Completion(orjson.dumps({"count": len(tokens), "max_model_len": None, "tokens": tokens,
                                        "token_strs": pieces}), None)

    async def decode(self, model: str, body: dict) -> Completion:
        encoding = await self.encoding(model)
        tokens = body.get("tokens") or []
        bad = next((t for t in tokens if not 0 <= t < encoding.n_vocab), None)
        if bad is not None:
            raise errors.UpstreamHTTPError(f"token {bad} is not in this model's vocabulary "
                                           f"(0..{encoding.n_vocab - 1})", status=400, code="invalid_token")
        try:
            text = encoding.decode(tokens, errors="replace")
        except KeyError as exc:  # an id inside the range that no token has
            raise errors.UpstreamHTTPError(f"token {exc} is not in this model's vocabulary", status=400,
                                           code="invalid_token") from None
        return Completion(orjson.dumps({"prompt": text}), None)
