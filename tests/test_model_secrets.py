"""Credentials of models added through the API (proxy/models/secrets.py): encrypted at rest
(nested ones too), readable only with the same salt, never shown in answers."""

from __future__ import annotations

import pytest

from proxy.models.secrets import Sealer, public

PARAMS = {"model": "openai/x", "api_key": "sk-0123456789abcdef", "api_base": "http://up/v1", "max_tokens": 5,
          "extra_headers": {"Authorization": "Bearer sk-0123456789abcdef", "X-Trace": "1"},
          "vertex_credentials": {"private_key": "pk"}, "aws_secret_access_key": "aws-secret-value-123",
          "client_secret_ref": "os.environ/CLIENT_SECRET"}


def test_sealed_at_rest_and_opened_with_the_same_salt_only():
    sealed = Sealer("salt").seal(PARAMS)
    assert "0123456789abcdef" not in str(sealed) and "pk" not in str(sealed["vertex_credentials"])
    assert sealed["api_base"] == "http://up/v1" and sealed["max_tokens"] == 5
    assert sealed["client_secret_ref"] == "os.environ/CLIENT_SECRET"  # a reference names no secret
    assert Sealer("salt").open(sealed) == PARAMS
    with pytest.raises(ValueError, match="cannot be decrypted"):
        Sealer("other").open(sealed)
    lost: list[str] = []
    assert "api_key" not in Sealer("other").open(sealed, unreadable=lost) and "api_key" in lost


def test_answers_drop_or_mask_every_credential():
    shown = public(PARAMS)
    assert "0123456789abcdef" not in str(shown) and "aws-secret-value" not in str(shown)
    assert "api_key" not in shown and "vertex_credentials" not in shown  # dropped, as LiteLLM does
    assert shown["extra_headers"] == {"Authorization": "Bear****cdef", "X-Trace": "1"}
    assert shown["max_tokens"] == 5 and shown["client_secret_ref"] == "os.environ/CLIENT_SECRET"
