"""Turns request headers into a Principal. The master key is compared in constant time."""

from __future__ import annotations

import hmac

from ..errors import Unauthorized
from .principal import MASTER, Principal, bearer_token


class Authenticator:
    def __init__(self, master_key: str | None):
        self._master = master_key.encode() if master_key else None

    async def authenticate(self, headers) -> Principal:
        token = bearer_token(headers)
        if not token:
            raise Unauthorized("no API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        if self._master is not None and hmac.compare_digest(token.encode(), self._master):
            return MASTER
        raise Unauthorized("invalid API key")
