import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from origin.auth.token_format import (
    KINDS,
    PREFIXES,
    hash_secret,
    looks_like_registry_token,
    new_token,
    parse_token,
)

SHAPE = re.compile(r"dp[uoepr]_[a-z0-9]{16}[A-Za-z0-9]{32}")


def test_prefixes_per_kind() -> None:
    assert PREFIXES == {
        "user": "dpu_",
        "org": "dpo_",
        "project": "dpp_",
        "pull": "dpr_",
        "edge": "dpe_",
    }
    assert frozenset(PREFIXES) == KINDS


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_new_token_round_trips(kind: str) -> None:
    token_id, secret, full = new_token(kind)
    assert full == PREFIXES[kind] + token_id + secret
    assert SHAPE.fullmatch(full)
    assert parse_token(full) == (kind, token_id, secret)
    assert looks_like_registry_token(full)


def test_new_tokens_are_random() -> None:
    tokens = [new_token("org") for _ in range(200)]
    assert len({token_id for token_id, _, _ in tokens}) == 200
    assert len({secret for _, secret, _ in tokens}) == 200
    # Every base62 character shows up somewhere in 6400 random ones.
    alphabet = set("".join(secret for _, secret, _ in tokens))
    assert len(alphabet) == 62


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        new_token("root")


def test_hash_secret_is_sha256_hex() -> None:
    assert hash_secret("abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(hash_secret("x" * 32)) == 64


@pytest.mark.parametrize(
    "text",
    [
        "",
        "dpo_",
        "dpo_" + "a" * 16,
        "dpo_" + "a" * 16 + "B" * 31,  # one short
        "dpo_" + "a" * 16 + "B" * 33,  # one long
        "dpx_" + "a" * 16 + "B" * 32,  # unknown prefix
        "DPO_" + "a" * 16 + "B" * 32,
        "dpo_" + "A" * 16 + "B" * 32,  # upper-case id
        "dpo_" + "a" * 15 + "-" + "B" * 32,
        "dpo_" + "a" * 16 + "B" * 31 + "_",
        "dpo_" + "a" * 16 + "B" * 31 + "é",  # non-ASCII letter
        "dpo_" + "a" * 16 + "B" * 31 + "٣",  # non-ASCII digit
        "dpo_" + "a" * 16 + "B" * 32 + "\n",
        " dpo_" + "a" * 16 + "B" * 32,
    ],
)
def test_parse_token_rejects_malformed(text: str) -> None:
    assert parse_token(text) is None


def test_looks_like_registry_token_is_about_the_prefix() -> None:
    assert looks_like_registry_token("dpr_whatever")
    assert not looks_like_registry_token("eyJhbGciOiJSUzI1NiJ9.e30.sig")
    assert not looks_like_registry_token("")
    assert not looks_like_registry_token("dpx_" + "a" * 48)


@given(st.text())
def test_parse_token_never_raises(text: str) -> None:
    parsed = parse_token(text)
    if parsed is not None:
        kind, token_id, secret = parsed
        assert text == PREFIXES[kind] + token_id + secret


@given(
    st.sampled_from(sorted(PREFIXES.values())),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=16, max_size=16),
    st.text(min_size=0, max_size=40),
)
def test_parse_token_near_misses(prefix: str, token_id: str, tail: str) -> None:
    parsed = parse_token(prefix + token_id + tail)
    valid_tail = len(tail) == 32 and all(c.isascii() and c.isalnum() for c in tail)
    assert (parsed is not None) == valid_tail
