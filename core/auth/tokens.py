"""The registry's bearer tokens (Docker token protocol): ES256 JWTs signed by origin, verified
anywhere against its published JWKS.

Verification is pure: callers pass ``now``, so tests use a fixed clock. Only ES256 is ever
accepted, and only with a key whose ``kid`` is in the JWKS; every failure is
:class:`core.errors.Unauthorized` with a short reason (never the token).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core.auth.scopes import Access
from core.errors import Unauthorized

ALGORITHM = "ES256"
#: Longer tokens are refused before any parsing.
MAX_TOKEN_LENGTH = 64 * 1024
_REQUIRED = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"]
_COORDINATE_BYTES = 32


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token says: who (``subject``, ``kind``, ``orgs``) may do what."""

    subject: str
    kind: str
    orgs: frozenset[str]
    access: tuple[Access, ...]
    issued_at: int
    expires_at: int
    token_id: str  # the JWT's jti
    #: The project a project-bound credential was limited to (the ``project`` claim; tokens
    #: issued before the claim existed have none and verify as before).
    project: str | None = None
    #: The long-lived registry token it was issued for (its id; the ``parent`` claim), so
    #: revoking that token refuses it at once at origin and at the edges. None: issued for
    #: no such token (anonymous, an OIDC trust) or before the claim existed.
    parent: str | None = None


# -- keys ------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _coordinates(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> tuple[str, str]:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    if not isinstance(public.curve, ec.SECP256R1):
        raise ValueError("signing keys must be P-256")
    numbers = public.public_numbers()
    return (
        _b64url(numbers.x.to_bytes(_COORDINATE_BYTES, "big")),
        _b64url(numbers.y.to_bytes(_COORDINATE_BYTES, "big")),
    )


def key_id(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """The RFC 7638 JWK thumbprint of the (public) key: a stable ``kid``."""
    x, y = _coordinates(key)
    canonical = json.dumps(
        {"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":"), sort_keys=True
    )
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def generate_signing_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A new P-256 key and its ``kid`` (see :func:`key_id`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key, key_id(key)


def public_jwk(private_key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    x, y = _coordinates(private_key)
    return {"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": ALGORITHM, "use": "sig"}


def jwks(keys: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """A JWKS document (``{"keys": [...]}``)."""
    return {"keys": [dict(key) for key in keys]}


def dump_private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_pem(data: bytes) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM P-256 private key; ValueError for anything else."""
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("signing key must be an EC P-256 private key")
    return key


@lru_cache(maxsize=64)
def _public_key(x: str, y: str) -> ec.EllipticCurvePublicKey:
    raw_x, raw_y = _b64url_decode(x), _b64url_decode(y)
    if len(raw_x) != _COORDINATE_BYTES or len(raw_y) != _COORDINATE_BYTES:
        raise ValueError("bad coordinate length")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(raw_x, "big"), int.from_bytes(raw_y, "big"), ec.SECP256R1()
    )
    return numbers.public_key()  # ValueError when the point is not on the curve


def _verification_key(jwks_doc: Mapping[str, Any], kid: str) -> ec.EllipticCurvePublicKey:
    keys = jwks_doc.get("keys") if isinstance(jwks_doc, Mapping) else None
    for jwk in keys if isinstance(keys, list) else []:
        if not isinstance(jwk, Mapping) or jwk.get("kid") != kid:
            continue
        if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
            raise _fail("unsupported key")
        if jwk.get("alg", ALGORITHM) != ALGORITHM or jwk.get("use", "sig") != "sig":
            raise _fail("unsupported key")
        x, y = jwk.get("x"), jwk.get("y")
        if not isinstance(x, str) or not isinstance(y, str):
            raise _fail("unsupported key")
        try:
            return _public_key(x, y)
        except (ValueError, binascii.Error) as exc:
            raise _fail("unsupported key") from exc
    raise _fail("unknown key id")


# -- tokens ----------------------------------------------------------------------------------


def _fail(reason: str) -> Unauthorized:
    return Unauthorized("invalid bearer token", detail={"reason": reason})


def sign_grant(
    grant: Grant,
    *,
    private_key: ec.EllipticCurvePrivateKey,
    kid: str,
    issuer: str,
    audience: str,
) -> str:
    """An ES256 JWT with Docker's ``access`` claim plus ``kind`` and ``orgs``."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": grant.subject,
        "aud": audience,
        "exp": grant.expires_at,
        "nbf": grant.issued_at,
        "iat": grant.issued_at,
        "jti": grant.token_id,
        "access": [
            {"type": a.type, "name": a.name, "actions": sorted(a.actions)} for a in grant.access
        ],
        "kind": grant.kind,
        "orgs": sorted(grant.orgs),
    }
    if grant.project is not None:
        claims["project"] = grant.project
    if grant.parent is not None:
        claims["parent"] = grant.parent
    return jwt.encode(claims, private_key, algorithm=ALGORITHM, headers={"kid": kid})


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"invalid {name} claim")
    return float(value)


def _string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise _fail(f"invalid {name} claim")
    return value


def _strings(value: Any, what: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _fail(f"invalid {what}")
    return frozenset(value)


def _access(value: Any) -> tuple[Access, ...]:
    if not isinstance(value, list):
        raise _fail("invalid access claim")
    accesses = []
    for entry in value:
        if not isinstance(entry, dict):
            raise _fail("invalid access claim")
        type_, name = entry.get("type"), entry.get("name")
        if not isinstance(type_, str) or not isinstance(name, str):
            raise _fail("invalid access claim")
        accesses.append(Access(type_, name, _strings(entry.get("actions"), "access claim")))
    return tuple(accesses)


def verify_grant(
    token: str,
    *,
    jwks: Mapping[str, Any],
    issuer: str,
    audience: str,
    now: float,
    leeway: float = 30,
) -> Grant:
    """Verify an ES256 token against ``jwks`` at time ``now``; Unauthorized on any failure."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise _fail("malformed token")
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise _fail("malformed token") from exc
    if header.get("alg") != ALGORITHM:
        raise _fail("unsupported algorithm")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _fail("missing key id")
    key = _verification_key(jwks, kid)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            # Times are checked below against the caller's clock.
            options={
                "require": _REQUIRED,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError as exc:
        raise _fail("bad signature") from exc
    except jwt.InvalidAudienceError as exc:
        raise _fail("wrong audience") from exc
    except jwt.InvalidIssuerError as exc:
        raise _fail("wrong issuer") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise _fail(f"missing {exc.claim} claim") from exc
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise _fail("invalid token") from exc
    expires, not_before, issued = (_number(claims, c) for c in ("exp", "nbf", "iat"))
    project = claims.get("project")
    if project is not None and (not isinstance(project, str) or not project):
        raise _fail("invalid project claim")
    parent = claims.get("parent")
    if parent is not None and (not isinstance(parent, str) or not parent):
        raise _fail("invalid parent claim")
    if expires <= now - leeway:
        raise _fail("token expired")
    if not_before > now + leeway:
        raise _fail("token not yet valid")
    if issued > now + leeway:
        raise _fail("token issued in the future")
    return Grant(
        subject=_string(claims, "sub"),
        kind=_string(claims, "kind"),
        orgs=_strings(claims.get("orgs", []), "orgs claim"),
        access=_access(claims.get("access", [])),
        issued_at=int(issued),
        expires_at=int(expires),
        token_id=_string(claims, "jti"),
        project=project,
        parent=parent,
    )
