"""A small Docker token service for CNCF Distribution's ``auth: token:`` mode, for tests.

``GET /token?service=&scope=...`` with Basic credentials of one of its users (or none:
anonymous, granted ``anonymous_actions``: nothing by default, ``{"pull"}`` for a public
registry like Docker Hub) answers ``{"token", "access_token", "expires_in", "issued_at"}``
with an ES256 JWT whose ``access`` claim holds the scopes asked for, cut down to the user's
actions. Distribution trusts the token through the ``x5c`` header: the signing key's
self-signed certificate is its ``rootcertbundle``. Wrong credentials get a 401 with a
``details`` message, as Docker Hub's token service answers.

Every request is recorded in ``requests`` (user, scopes), so tests can count token fetches.
``fail_status`` set: every request is answered with that status (a token service that is
down or rate limiting), after being recorded.
Served by hypercorn on 127.0.0.1:0 in the test's nursery.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypercorn.config import Config
from hypercorn.trio import serve

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class User:
    password: str
    actions: frozenset[str]  # on every repository: {"pull"} or {"pull", "push"}
    catalog: bool = True


@dataclass
class TokenRequest:
    user: str | None
    scopes: list[str]


@dataclass
class TokenService:
    directory: Path
    users: Mapping[str, User]
    service: str = "contract-registry"
    issuer: str = "contract-token-service"
    lifetime_seconds: int = 300
    #: The ``expires_in`` answered, when it should differ from the real lifetime (a token
    #: the registry stops taking before its holder expects).
    reported_lifetime_seconds: int | None = None
    url: str = ""
    requests: list[TokenRequest] = field(default_factory=list)
    anonymous_actions: frozenset[str] = frozenset()
    fail_status: int | None = None

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        now = datetime.datetime.now(datetime.UTC)
        self._certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.certificate_path = self.directory / "token-signing-cert.pem"
        self.certificate_path.write_bytes(
            self._certificate.public_bytes(serialization.Encoding.PEM)
        )
        self._shutdown = trio.Event()

    def distribution_auth(self) -> str:
        """The ``auth:`` section of Distribution's config that trusts this service."""
        return (
            "auth:\n"
            "  token:\n"
            f"    realm: {self.url}/token\n"
            f"    service: {self.service}\n"
            f"    issuer: {self.issuer}\n"
            f"    rootcertbundle: {self.certificate_path}\n"
        )

    async def start(self, nursery: trio.Nursery) -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.graceful_timeout = 1.0
        config.accesslog = None
        config.errorlog = None
        app: Any = self
        binds = await nursery.start(
            lambda task_status: serve(
                app, config, shutdown_trigger=self._shutdown.wait, task_status=task_status
            )
        )
        self.url = binds[0]

    def stop(self) -> None:
        self._shutdown.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        if scope["path"] != "/token":
            await _answer(send, 404, {"details": "no such endpoint"})
            return
        query = parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)
        scopes = [s for key, value in query if key == "scope" for s in value.split()]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        user = _basic_user(headers.get("authorization"))
        self.requests.append(TokenRequest(user[0] if user else None, scopes))
        if self.fail_status is not None:
            await _answer(send, self.fail_status, {"details": "token service failing"})
            return
        granted: frozenset[str] = self.anonymous_actions
        catalog = False
        if user is not None:
            known = self.users.get(user[0])
            if known is None or not secrets.compare_digest(known.password, user[1]):
                await _answer(send, 401, {"details": "incorrect username or password"})
                return
            granted, catalog = known.actions, known.catalog
        await _answer(send, 200, self._issue(user[0] if user else "", scopes, granted, catalog))

    def _issue(
        self, subject: str, scopes: list[str], granted: frozenset[str], catalog: bool
    ) -> dict[str, Any]:
        access = []
        for item in scopes:
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            allowed = set(actions.split(",")) & (
                {"*"} if kind == "registry" and catalog else set(granted)
            )
            if kind in ("repository", "registry") and allowed:
                access.append({"type": kind, "name": name, "actions": sorted(allowed)})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.lifetime_seconds,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        der = self._certificate.public_bytes(serialization.Encoding.DER)
        header = {"x5c": [base64.b64encode(der).decode()]}
        token = jwt.encode(claims, self._key, algorithm="ES256", headers=header)
        issued = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat()
        return {
            "token": token,
            "access_token": token,
            "expires_in": (
                self.lifetime_seconds
                if self.reported_lifetime_seconds is None
                else self.reported_lifetime_seconds
            ),
            "issued_at": issued,
        }


def _basic_user(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip()).decode()
    except ValueError:
        return None
    username, _, password = decoded.partition(":")
    return username, password


async def _answer(send: Send, status: int, document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
