"""Virtual key secrets: `sk-` + 32 random bytes (url-safe). Only the SHA-256 hash and a short
display prefix are ever stored."""

from __future__ import annotations

import hashlib
import secrets

HASH_LENGTH = 64


def new_key() -> str:
    return "sk-" + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def display_name(secret: str) -> str:
    return f"sk-...{secret[-4:]}"


def looks_like_hash(value: str) -> bool:
    return len(value) == HASH_LENGTH and all(c in "0123456789abcdef" for c in value)


def to_hash(key_or_hash: str) -> str:
    """Admin routes accept either the raw key or its hash (LiteLLM's `token`)."""
    return key_or_hash if looks_like_hash(key_or_hash) else hash_key(key_or_hash)
