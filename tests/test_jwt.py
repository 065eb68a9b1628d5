"""JWT bearer credentials: real keys (RSA and EC P-256), tokens signed with python-jose, JWKS from a
file and from a small real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk
from jose import jwt as jose_jwt
from pydantic import ValidationError

from proxy.auth.jwt import JWTSettings, JWTVerifier, looks_like_jwt
from proxy.errors import Unauthorized
from proxy.settings import ConfigError

ISS = "https://idp.example.test/realms/keystile"
AUD = "keystile"


class SigningKey:
    def __init__(self, kid: str, alg: str):
        self.kid, self.alg = kid, alg
        private = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg.startswith("RS")
                   else ec.generate_private_key(ec.SECP256R1()))
        self.private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()).decode()
        self.public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        self.jwk = {**jwk.construct(self.private_pem, alg).public_key().to_dict(), "kid": kid, "use": "sig"}

    def sign(self, kid: str | None = "same", **overrides) -> str:
        now = int(time.time())
        claims = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "nbf": now - 1, "exp": now + 300, **overrides}
        claims = {k: v for k, v in claims.items() if v is not None}
        headers = {"kid": self.kid if kid == "same" else kid} if kid is not None else None
        return jose_jwt.encode(claims, self.private_pem, algorithm=self.alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, claims: dict) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


def claims(**extra) -> dict:
    now = int(time.time())
    return {"iss": ISS, "aud": AUD, "sub": "alice", "exp": now + 300, **extra}


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {"rsa": SigningKey("rsa-1", "RS256"), "ec": SigningKey("ec-1", "ES256"),
            "other": SigningKey("rsa-1", "RS256"),  # same kid as "rsa", different key: a forgery
            "rotated": SigningKey("rsa-2", "RS256")}


def settings(**extra) -> JWTSettings:
    return JWTSettings.model_validate({"issuer": ISS, "audience": AUD, "team_id_claim": "team",
                                       "role_claim": "realm_access.roles", "admin_roles": ["keystile-admin"],
                                       "models_claim": "https://keystile.test/models", **extra})


@pytest.fixture(scope="module")
def file_verifier(keys, tmp_path_factory) -> JWTVerifier:
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    oct_key = {"kty": "oct", "kid": "hmac", "k": b64(b"secret")}  # never used for verification
    path.write_text(json.dumps({"keys": [keys["rsa"].jwk, keys["ec"].jwk, oct_key]}))
    return JWTVerifier(settings(jwks_file=str(path)))


async def test_rs256_token_maps_claims(file_verifier, keys):
    token = keys["rsa"].sign(team="research", realm_access={"roles": ["user"]},
                             **{"https://keystile.test/models": ["smollm2", "gpt-4o"]})
    p = await file_verifier.verify(token)
    assert (p.user_id, p.team_id, p.is_master, p.key_alias, p.key_type) == ("alice", "research", False, "jwt:alice",
                                                                              "default")
    assert p.models == frozenset({"smollm2", "gpt-4o"}) and p.may_use("smollm2") and not p.may_use("other")


async def test_es256_admin_role_is_master(file_verifier, keys):
    p = await file_verifier.verify(keys["ec"].sign(sub="bob", realm_access={"roles": ["user", "keystile-admin"]}))
    assert p.is_master and p.user_id == "bob" and p.team_id is None and p.models is None


async def test_custom_user_claim_and_space_separated_models(keys, tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [keys["rsa"].jwk]}))
    v = JWTVerifier(settings(jwks_file=str(path), user_id_claim="email", models_claim="models"))
    p = await v.verify(keys["rsa"].sign(kid=None, email="carol@example.test", models="smollm2 echo"))
    assert p.user_id == "carol@example.test" and p.models == frozenset({"smollm2", "echo"})


async def test_leeway_accepts_slightly_expired(file_verifier, keys):
    p = await file_verifier.verify(keys["rsa"].sign(exp=int(time.time()) - 10))
    assert p.user_id == "alice"


def hs256_with_public_key(k: SigningKey) -> str:
    signing_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": k.kid}, claims())
    return f"{signing_input}.{b64(hmac.new(k.public_pem, signing_input.encode(), hashlib.sha256).digest())}"


REJECTED = {
    "wrong issuer": (lambda k: k["rsa"].sign(iss="https://evil.example.test"), "issuer"),
    "wrong audience": (lambda k: k["rsa"].sign(aud="someone-else"), "audience"),
    "no audience": (lambda k: k["rsa"].sign(aud=None), "aud"),
    "no expiry": (lambda k: k["rsa"].sign(exp=None), "exp"),
    "expired": (lambda k: k["rsa"].sign(exp=int(time.time()) - 120), "expired"),
    "not yet valid": (lambda k: k["rsa"].sign(nbf=int(time.time()) + 120), "not yet valid"),
    "bad signature": (lambda k: k["other"].sign(), "Signature verification failed"),
    "tampered payload": (lambda k: (lambda t: t.split(".")[0] + "." + unsigned({}, claims(sub="admin")).split(".")[1]
                                    + "." + t.split(".")[2])(k["rsa"].sign()), "Signature verification failed"),
    "alg none": (lambda k: unsigned({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims()) + ".", "'none'"),
    "HS256 signed with the public key": (lambda k: hs256_with_public_key(k["rsa"]), "'HS256'"),
    "ES256 header on an RSA key": (lambda k: k["ec"].sign(kid="rsa-1"), "does not match"),
    "symmetric key id": (lambda k: k["rsa"].sign(kid="hmac"), "not known"),
    "unknown kid": (lambda k: k["rotated"].sign(), "not known"),
    "no kid with several keys": (lambda k: k["rsa"].sign(kid=None), "no 'kid'"),
    "garbage": (lambda k: "not.a.jwt", "malformed"),
    "no user claim": (lambda k: k["rsa"].sign(sub=None), "'sub'"),
    "roles of the wrong type": (lambda k: k["rsa"].sign(realm_access={"roles": 7}), "realm_access.roles"),
}


@pytest.mark.parametrize("case", REJECTED)
async def test_rejected(file_verifier, keys, case):
    make, fragment = REJECTED[case]
    with pytest.raises(Unauthorized) as err:
        await file_verifier.verify(make(keys))
    assert fragment in err.value.message and err.value.status == 401 and err.value.code == "invalid_token"
    assert "PRIVATE" not in err.value.message and "PUBLIC" not in err.value.message


def test_looks_like_jwt(keys):
    assert looks_like_jwt(keys["rsa"].sign())
    assert looks_like_jwt(unsigned({"alg": "none"}, claims()) + ".")
    for token in ("sk-" + b64(b"x" * 32), "not.a.jwt", "a.b", "", "eyJhbGciOiJSUzI1NiJ9.e30.sig.extra"):
        assert not looks_like_jwt(token)


@pytest.mark.parametrize("bad", [
    {"algorithms": ["HS256"]}, {"algorithms": ["none"]}, {"algorithms": []},
    {"jwks_url": "http://127.0.0.1/jwks"},  # both sources (jwks_file is set below)
    {"jwks_file": None}, {"jwks_file": None, "jwks_url": "ftp://idp/jwks"}, {"unknown_field": 1},
])
def test_settings_refuse(bad):
    with pytest.raises(ValidationError):
        JWTSettings.model_validate({"issuer": ISS, "audience": AUD, "jwks_file": "jwks.json", **bad})


def test_unreadable_jwks_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.json"):
        JWTVerifier(settings(jwks_file=str(tmp_path / "missing.json")))
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ConfigError, match="bad.json"):
        JWTVerifier(settings(jwks_file=str(tmp_path / "bad.json")))


class JWKSServer:
    """A real HTTP server on 127.0.0.1 serving a JWKS that the test can rotate or break."""

    def __init__(self) -> None:
        self.jwks: dict = {"keys": []}
        self.hits = 0
        self.status = 200

    async def handle(self, _: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response(self.jwks, status=self.status)

    async def __aenter__(self) -> JWKSServer:
        app = web.Application()
        app.router.add_get("/jwks", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/jwks"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_jwks_url_cache_and_rotation(keys):
    clock = Clock()
    async with JWKSServer() as server:
        server.jwks = {"keys": [keys["rsa"].jwk]}
        v = JWTVerifier(settings(jwks_url=server.url, jwks_cache_s=300), refetch_min_s=10, clock=clock)
        try:
            results = await asyncio.gather(*(v.verify(keys["rsa"].sign()) for _ in range(20)))
            assert all(p.user_id == "alice" for p in results) and server.hits == 1  # one fetch for a cold burst
            clock.now += 100
            await v.verify(keys["rsa"].sign())
            assert server.hits == 1  # served from the cache

            server.jwks = {"keys": [keys["rotated"].jwk]}  # the issuer rotates its signing key
            assert (await v.verify(keys["rotated"].sign())).user_id == "alice"
            assert server.hits == 2  # the unknown kid caused exactly one refetch

            # Unknown kids right after a fetch do not hammer the issuer: the refetch is rate-limited.
            for token in [keys["rsa"].sign(), *(keys["rotated"].sign(kid=f"bogus-{i}") for i in range(5))]:
                with pytest.raises(Unauthorized, match="not known"):
                    await v.verify(token)
            assert server.hits == 2
            clock.now += 11
            for _ in range(3):
                with pytest.raises(Unauthorized, match="not known"):
                    await v.verify(keys["rotated"].sign(kid="bogus"))
            assert server.hits == 3

            clock.now += 300  # the cache expires: the next request refetches
            await v.verify(keys["rotated"].sign())
            assert server.hits == 4

            server.status = 500  # the issuer is down when the cache expires: stale keys keep working
            clock.now += 300
            for _ in range(3):
                assert (await v.verify(keys["rotated"].sign())).user_id == "alice"
            assert server.hits == 5  # one failed attempt, then rate-limited
        finally:
            await v.aclose()


async def test_jwks_url_unavailable(keys):
    clock = Clock()
    async with JWKSServer() as server:
        server.jwks, server.status = {"keys": [keys["ec"].jwk]}, 503
        v = JWTVerifier(settings(jwks_url=server.url), refetch_min_s=10, clock=clock)
        try:
            for _ in range(3):
                with pytest.raises(Unauthorized, match="keys are unavailable"):
                    await v.verify(keys["ec"].sign())
            assert server.hits == 1
            server.status = 200
            clock.now += 10
            assert (await v.verify(keys["ec"].sign())).user_id == "alice" and server.hits == 2
        finally:
            await v.aclose()
        url = server.url
    v = JWTVerifier(settings(jwks_url=url), clock=clock)  # nothing listens there any more
    try:
        with pytest.raises(Unauthorized, match="keys are unavailable"):
            await v.verify(keys["ec"].sign())
    finally:
        await v.aclose()


def test_jwt_through_a_live_gateway(keys, tmp_path, upstream):
    """The configured issuer's tokens work as bearer credentials on a real server; forgeries get 401."""
    import httpx
    import openai

    from .conftest import relay_config
    from .servers import Keystile

    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [keys["rsa"].jwk]}))
    config = relay_config(upstream, jwt={"issuer": ISS, "audience": AUD, "jwks_file": str(path),
                                         "models_claim": "models", "role_claim": "roles",
                                         "admin_roles": ["keystile-admin"]})
    with Keystile(tmp_path, config) as server:
        good = keys["rsa"].sign(models=["echo"])
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=good, max_retries=0)
        assert client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "j"}]).model == "echo"
        assert [m.id for m in client.models.list()] == ["echo"]
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model="failing", messages=[{"role": "user", "content": "j"}])
        admin = keys["rsa"].sign(roles=["keystile-admin"])
        r = httpx.post(server.url + "/key/generate", json={}, headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200
        for bad in (keys["other"].sign(), keys["rsa"].sign(iss="https://evil.test"), keys["rsa"].sign(exp=1),
                    unsigned({"alg": "none", "typ": "JWT"}, claims()) + ".", hs256_with_public_key(keys["rsa"])):
            r = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {bad}"},
                           json={"model": "echo", "messages": [{"role": "user", "content": "j"}]})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_jwt_callers_obey_their_user_and_team_records(keys, tmp_path, upstream):
    """A valid token for a user the database blocks, limits or restricts is held to those records
    exactly as a key of that user is (it used to be served on the claims alone)."""
    import httpx

    from .conftest import relay_config
    from .servers import Keystile

    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [keys["rsa"].jwk]}))
    config = relay_config(upstream, jwt={"issuer": ISS, "audience": AUD, "jwks_file": str(path),
                                         "team_id_claim": "team"})
    with Keystile(tmp_path, config) as server:
        master = {"Authorization": f"Bearer {server.master_key}"}

        def admin(route: str, body: dict) -> None:
            r = httpx.post(server.url + route, json=body, headers=master, timeout=10)
            assert r.status_code == 200, r.text

        def chat(sub: str, model: str = "echo", **claims) -> httpx.Response:
            token = keys["rsa"].sign(sub=sub, **claims)
            return httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
                              json={"model": model, "messages": [{"role": "user", "content": "j"}]}, timeout=10)

        admin("/user/new", {"user_id": "bob", "models": ["echo"], "rpm_limit": 1, "auto_create_key": False})
        admin("/user/new", {"user_id": "carol", "max_budget": 0, "auto_create_key": False})
        admin("/user/new", {"user_id": "dave", "blocked": True, "auto_create_key": False})
        admin("/team/new", {"team_id": "closed", "blocked": True})

        assert chat("bob", "failing").status_code == 403  # not in bob's models
        assert chat("bob").status_code == 200
        limited = chat("bob")
        assert limited.status_code == 429 and "user:bob: 1 requests per minute" in limited.json()["error"]["message"]
        over = chat("carol")
        assert over.status_code == 429 and over.json()["error"]["code"] == "budget_exceeded"
        blocked = chat("dave")
        assert blocked.status_code == 403 and "blocked" in blocked.json()["error"]["message"]
        assert chat("erin", team="closed").status_code == 403  # the token's team is blocked
        assert chat("erin").status_code == 200  # no records: the claims alone

        admin("/user/update", {"user_id": "dave", "blocked": False})  # changes reach the cache
        assert chat("dave").status_code == 200
        admin("/user/new", {"user_id": "erin", "blocked": True, "auto_create_key": False})
        time.sleep(1.0)  # /user/new tells no cache itself: the change feed does, within a second
        assert chat("erin").status_code == 403  # a user created after its first request
