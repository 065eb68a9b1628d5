"""Turns request headers into a Principal: the master key (constant-time compare), a virtual key
(from the in-process cache), or a JWT from a configured issuer (merged with its user's and team's
records, from the same cache).

Failed attempts are throttled per client address, and the throttle is consulted before any
credential is compared. A throttled address still gets through with credentials that cannot be
guessed and are checked without the database: a virtual key whose hash the key cache knows to
exist (`KeyCache.may_exist`: every key in the database, kept current each second by the change
feed, so this survives restarts), or a JWT with a valid signature. Everything else from it (the
master key included, and any key the cache does not know) gets 429 without a comparison or a
database query. Guessing is as slow as before; valid keys behind the same proxy as a guesser are
not locked out."""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.requests import Request

from ..domain import MASTER, Principal, Refusal
from ..durations import utcnow
from ..errors import Forbidden, RateLimited, Unauthorized
from .cache import KeyCache
from .credentials import bearer_token
from .jwt import JWTVerifier, looks_like_jwt
from .secrets import hash_key


def refusal(remaining: float) -> RateLimited:
    return RateLimited("too many failed authentication attempts from this address", code="auth_throttled",
                       headers={"Retry-After": str(max(1, int(remaining) + 1))})


class FailureThrottle:
    """At most `limit` failed authentications per client address per `window` seconds."""

    def __init__(self, limit: int, window: float = 60.0, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        self._limit, self._window, self._max, self._clock = limit, window, max_clients, clock
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it is not throttled."""
        start, count = self._counts.get(client, (0.0, 0))
        remaining = start + self._window - self._clock()
        return remaining if count >= self._limit and remaining > 0 else None

    def check(self, client: str) -> None:
        remaining = self.retry_after(client)
        if remaining is not None:
            raise refusal(remaining)

    def failed(self, client: str) -> None:
        now = self._clock()
        start, count = self._counts.pop(client, (now, 0))
        if now - start >= self._window:
            start, count = now, 0
        self._counts[client] = (start, count + 1)
        while len(self._counts) > self._max:
            self._counts.popitem(last=False)


class Authenticator:
    """`known` bounds the in-memory map from keys that authenticated to their hashes: a key seen
    before is neither hashed again (SHA-256 through OpenSSL costs ~4 µs a request in the server)
    nor checked against the failure throttle (it is not a guess). The map holds raw keys in this
    process's memory only, as every request does while it is served; it is emptied when full."""

    def __init__(self, master_key: str | None, cache: KeyCache, throttle: FailureThrottle,
                 jwt: JWTVerifier | None = None, *, known: int = 100_000):
        self._master = master_key.encode() if master_key else None
        self._cache = cache
        self._throttle = throttle
        self._jwt = jwt
        self._known: dict[str, str] = {}
        self._max_known = known

    async def aclose(self) -> None:
        if self._jwt is not None:
            await self._jwt.aclose()

    async def authenticate(self, request: Request) -> Principal:
        token = bearer_token(request.headers)
        if not token:
            raise Unauthorized("no API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        client = (request.scope.get("client") or ("unknown",))[0]
        token_hash = self._known.get(token)
        known = token_hash is not None
        if not known:
            throttled = self._throttle.retry_after(client)
            if throttled is None and self._master is not None and hmac.compare_digest(token.encode(), self._master):
                return MASTER
            if self._jwt is not None and looks_like_jwt(token):
                return await self._jwt_caller(token, client)
            token_hash = hash_key(token) if token.startswith("sk-") else None
            if throttled is not None and (token_hash is None or not self._cache.may_exist(token_hash)):
                raise refusal(throttled)
        found = await self._cache.get(token_hash) if token_hash is not None else None
        if found is None:
            self._known.pop(token, None)
            self._throttle.failed(client)
            raise Unauthorized("invalid API key")
        found = _usable(found)
        if not known:
            if len(self._known) >= self._max_known:
                self._known.clear()
            self._known[token] = token_hash  # type: ignore[assignment]
        return found

    async def _jwt_caller(self, token: str, client: str) -> Principal:
        """A JWT's claims, held to its user's and team's database records as a key of that user is."""
        assert self._jwt is not None
        try:
            claims = await self._jwt.verify(token)
        except Unauthorized:
            self._throttle.failed(client)
            raise
        return _usable(await self._cache.get_jwt(claims))


def _usable(found: Principal | Refusal) -> Principal:
    if isinstance(found, Refusal):
        raise Forbidden(found.reason, code="key_blocked")
    if found.expires is not None and found.expires <= utcnow():
        raise Unauthorized("this key has expired", code="key_expired")
    return found
