"""Secrets of models added through the API: stored encrypted, never answered.

`litellm_params` values whose name says they are a credential (`api_key`, `aws_secret_access_key`,
`vertex_credentials`, anything with key/secret/token/password/credential in its name, as
LiteLLM's masker reads names) are encrypted with Fernet (AES-128-CBC + HMAC-SHA256) before they are
written, under a key derived from KEYSTILE_SALT_KEY, else from the master key (as LiteLLM uses
LITELLM_SALT_KEY, else its master key). Changing that secret makes stored ones unreadable: such a
model is skipped with an error in the log until it is saved again.

Answers drop the credentials LiteLLM drops (`api_key`, `client_secret`, the AWS and Vertex ones)
and mask any other credential-named value as LiteLLM does (`sk-1****wxyz`).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken

PREFIX = "enc:v1:"
DROPPED = ("api_key", "client_secret", "vertex_credentials", "vertex_ai_credentials", "aws_access_key_id",
           "aws_secret_access_key")
_SECRET_WORDS = frozenset({"key", "secret", "token", "password", "credential", "credentials", "authorization",
                           "auth"})


def sensitive(name: str) -> bool:
    """Whether a litellm_params field holds a credential, judged by the words of its name as
    LiteLLM's masker does (`api_key`, `aws_secret_access_key`, `x-api-key`; not `max_tokens`)."""
    return not _SECRET_WORDS.isdisjoint(name.lower().replace("-", "_").split("_"))


def _reference(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("os.environ/")


def mask(value: Any) -> Any:
    """`sk-1234567890abcd` -> `sk-1****abcd`; short values are masked whole."""
    if not isinstance(value, str):
        return "****"
    return value[:4] + "****" + value[-4:] if len(value) >= 16 else "****"


def public(params: dict[str, Any]) -> dict[str, Any]:
    """litellm_params as answers show them: credentials dropped or masked, env references kept
    (`os.environ/VAR` names a variable, not its value)."""
    out = {}
    for name, value in params.items():
        if name in DROPPED:
            continue
        if sensitive(name) and not _reference(value):
            value = mask(value)
        elif isinstance(value, dict):  # extra_headers and the like: their credentials too
            value = public(value)
        out[name] = value
    return out


class Sealer:
    def __init__(self, secret: str):
        digest = hashlib.sha256(b"keystile-model-secrets\0" + secret.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, params: dict[str, Any]) -> dict[str, Any]:
        """Credential-named values encrypted (any JSON value, e.g. a credentials object);
        `os.environ/VAR` references stay readable (they name a variable, not a secret)."""
        out: dict[str, Any] = {}
        for name, value in params.items():
            if sensitive(name) and value is not None and not _reference(value):
                value = PREFIX + self._fernet.encrypt(orjson.dumps(value)).decode()
            elif isinstance(value, dict):  # extra_headers and the like
                value = self.seal(value)
            out[name] = value
        return out

    def open(self, params: dict[str, Any], *, unreadable: list[str] | None = None) -> dict[str, Any]:
        """The values decrypted. One that cannot be (another salt key) raises ValueError, or, when
        an `unreadable` list is given, is left out and named there."""
        out = {}
        for name, value in params.items():
            if isinstance(value, str) and value.startswith(PREFIX):
                try:
                    value = orjson.loads(self._fernet.decrypt(value[len(PREFIX):].encode()))
                except InvalidToken:
                    if unreadable is None:
                        raise ValueError(f"litellm_params.{name} cannot be decrypted (was KEYSTILE_SALT_KEY or "
                                         f"the master key changed?)") from None
                    unreadable.append(name)
                    continue
            elif isinstance(value, dict):
                value = self.open(value, unreadable=unreadable)
            out[name] = value
        return out
