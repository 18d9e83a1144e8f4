import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from core.auth.scopes import Access
from core.auth.tokens import (
    Grant,
    dump_private_pem,
    generate_signing_key,
    jwks,
    key_id,
    load_private_pem,
    public_jwk,
    sign_grant,
    verify_grant,
)
from core.errors import Unauthorized

KEY, KID = generate_signing_key()
JWKS = jwks([public_jwk(KEY, KID)])
ISS, AUD = "https://registry.example", "registry.example"
NOW = 1_700_000_000
GRANT = Grant(
    subject="tok_123",
    kind="org",
    orgs=frozenset({"acme", "beta"}),
    access=(
        Access("repository", "acme/app", frozenset({"pull", "push"})),
        Access("registry", "catalog", frozenset({"*"})),
    ),
    issued_at=NOW,
    expires_at=NOW + 300,
    token_id="jti-1",
)


def sign(grant: Grant = GRANT, key: ec.EllipticCurvePrivateKey = KEY, kid: str = KID) -> str:
    return sign_grant(grant, private_key=key, kid=kid, issuer=ISS, audience=AUD)


def verify(token: str, now: float = NOW + 10, keys: Any = JWKS) -> Grant:
    return verify_grant(token, jwks=keys, issuer=ISS, audience=AUD, now=now)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "sub": "tok_123",
        "aud": AUD,
        "exp": NOW + 300,
        "nbf": NOW,
        "iat": NOW,
        "jti": "jti-1",
        "access": [],
        "kind": "org",
        "orgs": ["acme"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


def rejected(token: str, *, now: float = NOW + 10, keys: Any = JWKS) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        verify(token, now=now, keys=keys)
    assert token[:40] not in json.dumps(info.value.detail) or len(token) < 8
    return info.value


# -- keys ------------------------------------------------------------------------------------


def test_public_jwk_and_jwks() -> None:
    jwk = public_jwk(KEY, KID)
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256"
    assert jwk["alg"] == "ES256" and jwk["use"] == "sig" and jwk["kid"] == KID
    assert "d" not in jwk
    assert len(base64.urlsafe_b64decode(jwk["x"] + "=")) == 32
    assert len(base64.urlsafe_b64decode(jwk["y"] + "=")) == 32
    assert JWKS == {"keys": [jwk]}
    assert json.loads(json.dumps(JWKS)) == JWKS


def test_kid_is_the_jwk_thumbprint() -> None:
    jwk = public_jwk(KEY, KID)
    canonical = json.dumps(
        {"crv": "P-256", "kty": "EC", "x": jwk["x"], "y": jwk["y"]}, separators=(",", ":")
    )
    assert KID == b64(hashlib.sha256(canonical.encode()).digest())
    assert key_id(KEY) == key_id(KEY.public_key()) == KID
    assert generate_signing_key()[1] != KID


def test_pem_round_trip() -> None:
    loaded = load_private_pem(dump_private_pem(KEY))
    assert key_id(loaded) == KID
    assert verify(sign(key=loaded)) == GRANT


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
)
def test_load_private_pem_rejects_other_keys(key: Any) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError):
        load_private_pem(pem)


# -- round trip ------------------------------------------------------------------------------


def test_sign_then_verify_round_trips() -> None:
    token = sign()
    assert verify(token) == GRANT
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == KID


def test_claims_follow_the_docker_format() -> None:
    payload = jwt.decode(sign(), options={"verify_signature": False})
    assert payload["access"] == [
        {"type": "repository", "name": "acme/app", "actions": ["pull", "push"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]
    assert payload["orgs"] == ["acme", "beta"]
    assert payload["kind"] == "org" and payload["jti"] == "jti-1" and payload["sub"] == "tok_123"
    assert (payload["iat"], payload["nbf"], payload["exp"]) == (NOW, NOW, NOW + 300)
    assert (payload["iss"], payload["aud"]) == (ISS, AUD)


def test_clock_boundaries_with_leeway() -> None:
    token = sign()
    assert verify(token, now=NOW + 300 + 29) == GRANT
    rejected(token, now=NOW + 300 + 30)
    assert verify(token, now=NOW - 29) == GRANT
    rejected(token, now=NOW - 31)


def test_verify_with_a_rotated_jwks() -> None:
    other, other_kid = generate_signing_key()
    keys = jwks([public_jwk(other, other_kid), public_jwk(KEY, KID)])
    assert verify(sign(), keys=keys) == GRANT
    assert verify(sign(key=other, kid=other_kid), keys=keys).subject == "tok_123"


# -- attacks ---------------------------------------------------------------------------------


def test_alg_none_is_rejected() -> None:
    header = b64json({"alg": "none", "typ": "JWT", "kid": KID})
    for signature in ("", "x"):
        rejected(f"{header}.{b64json(claims())}.{signature}")
    assert rejected(f"{header}.{b64json(claims())}.").detail == {"reason": "unsupported algorithm"}


def test_hs256_with_the_public_key_as_secret_is_rejected() -> None:
    secret = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': KID})}.{b64json(claims())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    rejected(f"{signing_input}.{b64(mac)}")
    # The same with the JWK's JSON as the secret.
    mac = hmac.new(json.dumps(JWKS["keys"][0]).encode(), signing_input.encode(), "sha256").digest()
    rejected(f"{signing_input}.{b64(mac)}")


def test_rs256_is_rejected() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": KID})
    rejected(token)


def test_es384_is_rejected() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    rejected(jwt.encode(claims(), p384, algorithm="ES384", headers={"kid": KID}))


def test_foreign_key_with_the_same_kid_is_rejected() -> None:
    foreign, _ = generate_signing_key()
    assert rejected(sign(key=foreign, kid=KID)).detail == {"reason": "bad signature"}


@pytest.mark.parametrize(
    "change",
    [
        {"orgs": ["acme", "beta", "victim"]},
        {"sub": "someone-else"},
        {"exp": NOW + 10**6},
        {"access": [{"type": "repository", "name": "victim/app", "actions": ["push"]}]},
    ],
)
def test_tampered_payload_is_rejected(change: dict[str, Any]) -> None:
    header, payload, signature = sign().split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    decoded.update(change)
    rejected(f"{header}.{b64json(decoded)}.{signature}")


def test_tampered_header_is_rejected() -> None:
    _, payload, signature = sign().split(".")
    header = b64json({"alg": "ES256", "typ": "JWT", "kid": KID, "x": 1})
    rejected(f"{header}.{payload}.{signature}")


def test_expired_and_not_yet_valid() -> None:
    assert rejected(sign(), now=NOW + 10_000).detail == {"reason": "token expired"}
    assert rejected(sign(), now=NOW - 10_000).detail == {"reason": "token not yet valid"}


def test_nbf_and_iat_in_the_future_are_checked_separately() -> None:
    token = jwt.encode(claims(nbf=NOW + 100), KEY, algorithm="ES256", headers={"kid": KID})
    assert rejected(token).detail == {"reason": "token not yet valid"}
    token = jwt.encode(claims(iat=NOW + 100), KEY, algorithm="ES256", headers={"kid": KID})
    assert rejected(token).detail == {"reason": "token issued in the future"}


def test_wrong_audience_and_issuer() -> None:
    grant_token = sign_grant(GRANT, private_key=KEY, kid=KID, issuer=ISS, audience="other")
    assert rejected(grant_token).detail == {"reason": "wrong audience"}
    grant_token = sign_grant(GRANT, private_key=KEY, kid=KID, issuer="evil", audience=AUD)
    assert rejected(grant_token).detail == {"reason": "wrong issuer"}


def test_missing_and_unknown_kid() -> None:
    no_kid = jwt.encode(claims(), KEY, algorithm="ES256")
    assert rejected(no_kid).detail == {"reason": "missing key id"}
    assert rejected(sign(kid="nope")).detail == {"reason": "unknown key id"}
    assert rejected(sign(), keys={"keys": []}).detail == {"reason": "unknown key id"}
    assert rejected(sign(), keys={}).detail == {"reason": "unknown key id"}
    _, payload, signature = sign().split(".")
    for kid in (7, None, "", ["x"]):
        header = b64json({"alg": "ES256", "typ": "JWT", "kid": kid})
        rejected(f"{header}.{payload}.{signature}")


@pytest.mark.parametrize(
    "jwk_change",
    [
        {"alg": "RS256"},
        {"kty": "RSA"},
        {"crv": "P-384"},
        {"use": "enc"},
        {"x": "AAAA"},
        {"x": None},
        {"y": b64(b"\x00" * 32)},  # not on the curve
    ],
)
def test_unusable_jwk_is_rejected(jwk_change: dict[str, Any]) -> None:
    jwk = {**public_jwk(KEY, KID), **jwk_change}
    assert rejected(sign(), keys={"keys": [jwk]}).detail == {"reason": "unsupported key"}


@pytest.mark.parametrize("missing", ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "kind"])
def test_missing_claims_are_rejected(missing: str) -> None:
    token = jwt.encode(claims(**{missing: None}), KEY, algorithm="ES256", headers={"kid": KID})
    rejected(token)


@pytest.mark.parametrize(
    "change",
    [
        {"exp": "later"},
        {"exp": True},
        {"nbf": "x"},
        {"iat": [1]},
        {"sub": 5},
        {"kind": ""},
        {"orgs": "acme"},
        {"orgs": [1]},
        {"access": {"type": "repository"}},
        {"access": ["repository:a:pull"]},
        {"access": [{"type": "repository", "name": "a"}]},
        {"access": [{"type": "repository", "name": "a", "actions": "pull"}]},
    ],
)
def test_malformed_claims_are_rejected(change: dict[str, Any]) -> None:
    token = jwt.encode(claims(**change), KEY, algorithm="ES256", headers={"kid": KID})
    rejected(token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c",
        "....",
        "eyJ",
        "eyJhbGciOiJFUzI1NiJ9..",
        "é.é.é",
        "x" * 70_000,
        b64json([1, 2]) + "." + b64json({}) + ".",
        b64json({"alg": "ES256", "kid": KID}) + ".not-json." + b64(b"sig"),
        b64json({"alg": "ES256", "kid": KID}) + "." + b64json([1]) + "." + b64(b"\x00" * 64),
    ],
)
def test_garbage_is_rejected(token: str) -> None:
    rejected(token)


def test_a_non_string_token_is_rejected() -> None:
    with pytest.raises(Unauthorized):
        verify_grant(b"bytes", jwks=JWKS, issuer=ISS, audience=AUD, now=NOW)  # type: ignore[arg-type]


def test_a_signed_non_object_payload_is_rejected() -> None:
    token = jwt.api_jws.encode(b"[1, 2]", KEY, algorithm="ES256", headers={"kid": KID})
    assert rejected(token).detail == {"reason": "invalid token"}
