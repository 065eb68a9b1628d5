"""JWT bearer credentials from an OIDC issuer: verified against its JWKS, mapped to a Principal.

Only asymmetric algorithms are accepted, and a key is used only with the algorithm family and
curve it was published for, so neither `alg: none` nor an HS256 token "signed" with the public
key can pass. Keys come from a JWKS file (read once) or a JWKS URL (cached, refetched on an
unknown `kid` at most once per `refetch_min_s`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from jose import jwk, jwt
from jose.backends.base import Key
from jose.exceptions import ExpiredSignatureError, JOSEError, JWTClaimsError

from ..errors import Unauthorized
from ..settings import KEY_TYPES, ConfigError, JWTSettings
from ..domain import Principal

log = logging.getLogger("keystile.jwt")

# Algorithm -> the JWK key type it may be verified with; ES* are also pinned to their curve.
CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
MAX_TOKEN_CHARS = 16384
FETCH_TIMEOUT_S = 5.0
_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

JWKS = dict[str | None, dict[str, Any]]


def _header(token: str) -> dict[str, Any] | None:
    if len(token) > MAX_TOKEN_CHARS or not _SHAPE.fullmatch(token):
        return None
    head = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are all ValueErrors
        return None
    return header if isinstance(header, dict) and isinstance(header.get("alg"), str) else None


def looks_like_jwt(token: str) -> bool:
    """Cheap routing check: three base64url segments whose header is JSON with an `alg`."""
    return _header(token) is not None


def parse_jwks(doc: Any, source: str) -> JWKS:
    """Signing keys (RSA/EC, `use` absent or "sig") by kid; symmetric and encryption keys are dropped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError(f'{source}: not a JWKS (expected {{"keys": [...]}})')
    return {k.get("kid"): k for k in doc["keys"]
            if isinstance(k, dict) and k.get("kty") in ("RSA", "EC") and k.get("use", "sig") == "sig"}


def _reject(message: str) -> Unauthorized:
    return Unauthorized(message, code="invalid_token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by exact name (e.g. "https://example.com/roles"), else by dotted path ("realm_access.roles")."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _strings(value: Any, name: str) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.replace(",", " ").split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise _reject(f"JWT claim '{name}' must be a string or a list of strings")


class JWTVerifier:
    def __init__(self, settings: JWTSettings, *, refetch_min_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self._s = settings
        self._admin = frozenset(settings.admin_roles)
        self._refetch_min_s = refetch_min_s
        self._clock = clock
        self._keys: JWKS | None = None
        self._built: dict[tuple[str | None, str], Key] = {}
        self._fetched_at = self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0  # JWKS downloads so far (for metrics and tests)
        if settings.jwks_file is not None:
            path = settings.jwks_file
            try:
                self._keys = parse_jwks(json.loads(path.read_text()), str(path))
            except OSError as exc:
                raise ConfigError(f"jwt.jwks_file: cannot read {path} ({exc.strerror})") from exc
            except ValueError as exc:
                raise ConfigError(f"jwt.jwks_file: {path}: not a valid JWKS ({exc})") from exc

    async def verify(self, token: str) -> Principal:
        header = _header(token)
        if header is None:
            raise _reject("malformed JWT")
        alg, kid = header["alg"], header.get("kid")
        if alg not in self._s.algorithms:
            raise _reject(f"JWT algorithm '{alg[:20]}' is not accepted (allowed: {', '.join(self._s.algorithms)})")
        if "crit" in header:
            raise _reject("JWT header has unsupported critical extensions")
        if kid is not None and not isinstance(kid, str):
            raise _reject("JWT header 'kid' must be a string")
        key = await self._key(kid, alg)
        options = {"require_exp": True, "require_iss": True, "require_aud": True, "verify_at_hash": False,
                   "leeway": self._s.leeway_s}
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self._s.audience,
                                issuer=self._s.issuer, options=options)
        except ExpiredSignatureError:
            raise _reject("JWT has expired") from None
        except JWTClaimsError as exc:
            raise _reject(f"JWT rejected: {exc}") from None
        except JOSEError as exc:
            raise _reject(f"invalid JWT: {exc}") from None
        return self._principal(claims)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        s = self._s
        user = _claim(claims, s.user_id_claim)
        if isinstance(user, bool) or not isinstance(user, (str, int)) or user == "":
            raise _reject(f"JWT has no usable '{s.user_id_claim}' claim")
        team = _claim(claims, s.team_id_claim) if s.team_id_claim else None
        if team is not None and not isinstance(team, str):
            raise _reject(f"JWT claim '{s.team_id_claim}' must be a string")
        role_value = _claim(claims, s.role_claim) if s.role_claim else None
        roles = _strings(role_value, s.role_claim or "") if role_value is not None else frozenset()
        models_value = _claim(claims, s.models_claim) if s.models_claim else None
        models = _strings(models_value, s.models_claim or "") if models_value is not None else None
        return Principal(is_master=bool(roles & self._admin), key_alias=f"jwt:{user}", user_id=str(user),
                         team_id=team, key_type="default", models=models)

    async def _key(self, kid: str | None, alg: str) -> Key:
        if self._s.jwks_url and (self._keys is None or self._clock() - self._fetched_at >= self._s.jwks_cache_s):
            await self._refresh(unknown_kid=False)
        key = self._lookup(kid, alg)
        if key is None and self._s.jwks_url:
            await self._refresh(unknown_kid=True)
            key = self._lookup(kid, alg)
        if key is None:
            raise _reject("JWT has no 'kid' and the issuer publishes several keys" if kid is None
                          else f"JWT key id '{kid[:64]}' is not known to the issuer")
        return key

    def _lookup(self, kid: str | None, alg: str) -> Key | None:
        keys = self._keys or {}
        if kid is None and len(keys) == 1:
            kid = next(iter(keys))
        if kid not in keys:
            return None
        built = self._built.get((kid, alg))
        if built is None:
            jwk_dict = keys[kid]
            if (jwk_dict.get("kty") != KEY_TYPES[alg] or jwk_dict.get("alg", alg) != alg
                    or (alg in CURVES and jwk_dict.get("crv") != CURVES[alg])):
                raise _reject(f"JWT algorithm {alg} does not match the issuer's key '{str(kid)[:64]}'")
            try:
                built = self._built[(kid, alg)] = jwk.construct(jwk_dict, alg)
            except (JOSEError, ValueError, KeyError, TypeError):
                raise _reject(f"the issuer's key '{str(kid)[:64]}' is unusable") from None
        return built

    async def _refresh(self, *, unknown_kid: bool) -> None:
        """Fetch the JWKS unless fresh (or just refetched by another request); never more often than refetch_min_s."""
        url = self._s.jwks_url
        assert url is not None
        async with self._lock:
            now = self._clock()
            fresh = self._keys is not None and now - self._fetched_at < self._s.jwks_cache_s
            if (fresh and not unknown_kid) or now - self._attempted_at < self._refetch_min_s:
                pass
            else:
                self._attempted_at = now
                try:
                    keys = await self._fetch(url)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    log.warning("cannot fetch JWKS from %s: %s", url, exc or type(exc).__name__)
                else:
                    self._keys, self._built, self._fetched_at = keys, {}, now
        if self._keys is None:
            raise _reject("cannot verify JWT: the issuer's signing keys are unavailable")

    async def _fetch(self, url: str) -> JWKS:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S))
        self.fetches += 1
        async with self._session.get(url, headers={"Accept": "application/json"}) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = await resp.read()
        return parse_jwks(json.loads(body), url)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
