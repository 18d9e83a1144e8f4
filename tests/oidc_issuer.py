"""A real OIDC issuer for tests: hypercorn on 127.0.0.1:0 inside the test's trio run.

Publishes ``/.well-known/openid-configuration`` (issuer = its own ``http://127.0.0.1:PORT``)
and ``/jwks``, counts requests per path, and mints ID tokens with its keys (or any other key,
algorithm and header a test wants, ``none`` and HS256 included).

Use the ``oidc_issuer`` fixture (import ``oidc_issuer_fixture`` into the test module) or
``async with open_oidc_issuer() as issuer:``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypercorn.config import Config
from hypercorn.trio import serve

DEFAULT_AUDIENCE = "depot-registry"
DEFAULT_SUBJECT = "repo:acme/app:ref:refs/heads/main"


@dataclass
class IssuerKey:
    kid: str
    alg: str  # "RS256" | "ES256"
    private_key: Any

    @property
    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        if self.alg == "RS256":
            jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def new_key(alg: str = "RS256") -> IssuerKey:
    """A fresh key with a random kid (two issuers in one test never share a kid)."""
    kid = f"{alg.lower()}-{secrets.token_hex(4)}"
    if alg == "RS256":
        return IssuerKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    if alg == "ES256":
        return IssuerKey(kid, alg, ec.generate_private_key(ec.SECP256R1()))
    raise ValueError(alg)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64json(value: object) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


class OidcIssuer:
    """An ASGI app and the state a test inspects: ``url``, ``requests``, ``keys``."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: Counter[str] = Counter()
        self.keys: list[IssuerKey] = [new_key("RS256"), new_key("ES256")]
        self.current_kid = self.keys[0].kid
        #: merged into the discovery document (e.g. a wrong issuer, a huge field)
        self.discovery_override: dict[str, Any] = {}
        #: while set, every request hangs until the server stops
        self.stall = False
        self._shutdown = trio.Event()
        self._stopped = trio.Event()

    # -- tokens ------------------------------------------------------------------------------

    def key(self, kid: str) -> IssuerKey:
        return next(key for key in self.keys if key.kid == kid)

    def rotate(self, alg: str = "RS256") -> str:
        """Publish a new key and make it current; returns its kid."""
        key = new_key(alg)
        self.keys.append(key)
        if alg == "RS256":
            self.current_kid = key.kid
        return key.kid

    def claims(
        self, claims: dict[str, Any] | None = None, *, drop: Iterable[str] = ()
    ) -> dict[str, Any]:
        now = int(time.time())
        merged: dict[str, Any] = {
            "iss": self.url,
            "aud": DEFAULT_AUDIENCE,
            "sub": DEFAULT_SUBJECT,
            "iat": now,
            "exp": now + 300,
            **(claims or {}),
        }
        for name in drop:
            merged.pop(name, None)
        return merged

    def mint(
        self,
        claims: dict[str, Any] | None = None,
        *,
        kid: str | None = None,
        alg: str = "RS256",
        key: Any = None,
        drop: Iterable[str] = (),
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Sign an ID token: default claims overlaid by ``claims``, minus ``drop``.

        Without ``key``, the current key for ``alg`` signs and its kid goes in the header
        (``kid`` overrides the header only). ``alg="none"`` leaves the token unsigned;
        HS* signs with ``key`` (bytes) as the HMAC secret, PEM or not.
        """
        payload = self.claims(claims, drop=drop)
        if key is None and alg in ("RS256", "ES256"):
            signer = self.key(self.current_kid) if alg == "RS256" else self.latest(alg)
            key, kid = signer.private_key, kid or signer.kid
        header: dict[str, Any] = {"alg": alg, "typ": "JWT", **(headers or {})}
        if kid is not None:
            header["kid"] = kid
        if alg == "none" or alg.startswith("HS"):
            signing_input = f"{_b64json(header)}.{_b64json(payload)}"
            if alg == "none":
                return f"{signing_input}."
            digest = getattr(hashlib, f"sha{alg[2:]}")
            mac = hmac.new(key, signing_input.encode(), digest).digest()
            return f"{signing_input}.{_b64(mac)}"
        # PyJWS signs the bytes as given: no claim checks, so tests can mint any payload.
        body = json.dumps(payload, separators=(",", ":")).encode()
        return jwt.PyJWS().encode(body, key, algorithm=alg, headers=header)

    def latest(self, alg: str) -> IssuerKey:
        return [key for key in self.keys if key.alg == alg][-1]

    def public_pem(self, kid: str | None = None) -> bytes:
        from cryptography.hazmat.primitives import serialization

        public = self.key(kid or self.current_kid).private_key.public_key()
        return public.public_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    # -- serving -----------------------------------------------------------------------------

    def documents(self) -> dict[str, object]:
        return {
            "/.well-known/openid-configuration": {
                "issuer": self.url,
                "jwks_uri": f"{self.url}/jwks",
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                **self.discovery_override,
            },
            "/jwks": {"keys": [key.public_jwk for key in self.keys]},
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        self.requests[path] += 1
        if self.stall:
            await self._shutdown.wait()
        document = self.documents().get(path)
        status = 200 if document is not None else 404
        body = json.dumps(document if document is not None else {"error": "not found"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def start(self, nursery: trio.Nursery) -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.graceful_timeout = 1.0
        config.accesslog = None
        config.errorlog = None
        binds = await nursery.start(self._serve, config)
        self.url = binds[0]

    async def _serve(self, config: Config, *, task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            app: Any = self  # a bare ASGI callable; hypercorn types only its TypedDicts
            await serve(app, config, shutdown_trigger=self._shutdown.wait, task_status=task_status)
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Stop serving and wait until the port is closed."""
        self._shutdown.set()
        await self._stopped.wait()


@asynccontextmanager
async def open_oidc_issuer() -> AsyncIterator[OidcIssuer]:
    async with trio.open_nursery() as nursery:
        issuer = OidcIssuer()
        await issuer.start(nursery)
        try:
            yield issuer
        finally:
            await issuer.stop()


@pytest.fixture(name="oidc_issuer")
async def oidc_issuer_fixture(nursery: trio.Nursery) -> AsyncIterator[OidcIssuer]:
    issuer = OidcIssuer()
    await issuer.start(nursery)
    yield issuer
    await issuer.stop()
