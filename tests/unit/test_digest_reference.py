import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.digest import Digest, parse_digest, sha256_of
from core.endpoints import (
    BlobEndpoint,
    Endpoint,
    Kind,
    ManifestEndpoint,
    ReferrersEndpoint,
    UploadEndpoint,
    parse_endpoint,
)
from core.errors import DigestInvalid, ManifestInvalid, NameInvalid, NotFound
from core.reference import (
    Tag,
    parse_manifest_reference,
    parse_repository_name,
    parse_tag,
)

GOOD = "sha256:" + "a" * 64


def test_parse_digest_accepts_sha256_and_sha512() -> None:
    assert str(parse_digest(GOOD)) == GOOD
    assert parse_digest("sha512:" + "0" * 128).algorithm == "sha512"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        "sha256:" + "a" * 63,
        "sha256:" + "A" * 64,
        "md5:" + "a" * 32,
        "sha256:" + "g" * 64,
        ":" + "a" * 64,
        "sha256:" + "a" * 65,
        "../etc/passwd",
    ],
)
def test_parse_digest_rejects_malformed(text: str) -> None:
    with pytest.raises(DigestInvalid):
        parse_digest(text)


@given(st.text(max_size=80))
def test_parse_digest_never_raises_anything_but_digest_invalid(text: str) -> None:
    try:
        digest = parse_digest(text)
    except DigestInvalid:
        return
    assert str(digest) == text


def test_sha256_of_matches_hashlib() -> None:
    assert str(sha256_of(b"x")) == "sha256:" + hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize("name", ["a", "library/ubuntu", "a.b_c__d-e---f/g0", "x/" * 20 + "y"])
def test_valid_repository_names(name: str) -> None:
    assert parse_repository_name(name).value == name


@pytest.mark.parametrize(
    "name", ["", "A", "a/", "/a", "a//b", "a/../b", "-a", "a_", "a___b", "a" * 256, "a b"]
)
def test_invalid_repository_names(name: str) -> None:
    with pytest.raises(NameInvalid):
        parse_repository_name(name)


def test_tags() -> None:
    assert parse_tag("v1.0_rc-2").value == "v1.0_rc-2"
    assert parse_tag("a" * 128)
    for bad in ["", ".v1", "-v1", "a" * 129, "v/1"]:
        with pytest.raises(ManifestInvalid):
            parse_tag(bad)


def test_manifest_reference_is_digest_when_it_has_a_colon() -> None:
    assert parse_manifest_reference("latest") == Tag("latest")
    assert str(parse_manifest_reference(GOOD)) == GOOD
    with pytest.raises(DigestInvalid):
        parse_manifest_reference("sha256:nope")


@pytest.mark.parametrize(
    ("path", "kind", "name", "arg"),
    [
        ("/v2/", Kind.BASE, None, None),
        ("/v2", Kind.BASE, None, None),
        ("/v2/_catalog", Kind.CATALOG, None, None),
        ("/v2/a/b/blobs/uploads/", Kind.UPLOADS, "a/b", None),
        ("/v2/a/b/blobs/uploads/abc", Kind.UPLOAD, "a/b", "abc"),
        ("/v2/a/b/blobs/" + GOOD, Kind.BLOB, "a/b", GOOD),
        ("/v2/a/manifests/latest", Kind.MANIFEST, "a", "latest"),
        ("/v2/blobs/manifests/x", Kind.MANIFEST, "blobs", "x"),
        ("/v2/a/manifests/b/manifests/c", Kind.MANIFEST, "a/manifests/b", "c"),
        ("/v2/a/tags/list", Kind.TAGS, "a", None),
        ("/v2/a/referrers/" + GOOD, Kind.REFERRERS, "a", GOOD),
    ],
)
def test_parse_endpoint(path: str, kind: Kind, name: str | None, arg: str | None) -> None:
    endpoint = parse_endpoint(path)
    assert endpoint.kind is kind
    assert (endpoint.name.value if endpoint.name else None) == name
    assert argument_of(endpoint) == arg


def argument_of(endpoint: Endpoint) -> str | None:
    """The typed value after the name, as text (and checked to be of its kind's type)."""
    match endpoint:
        case BlobEndpoint(digest=digest) | ReferrersEndpoint(subject=digest):
            assert isinstance(digest, Digest)
            return str(digest)
        case ManifestEndpoint(reference=reference):
            assert isinstance(reference, Tag | Digest)
            return str(reference)
        case UploadEndpoint(upload_id=upload_id):
            return upload_id
    return None


def test_parse_endpoint_types_the_manifest_reference() -> None:
    by_tag = parse_endpoint("/v2/a/manifests/latest")
    by_digest = parse_endpoint(f"/v2/a/manifests/{GOOD}")
    assert isinstance(by_tag, ManifestEndpoint) and by_tag.reference == Tag("latest")
    assert isinstance(by_digest, ManifestEndpoint)
    assert by_digest.reference == parse_digest(GOOD)


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/v2/a/blobs/sha256:abc", DigestInvalid),
        ("/v2/a/blobs/notadigest", DigestInvalid),
        ("/v2/a/referrers/md5:" + "a" * 32, DigestInvalid),
        ("/v2/a/manifests/sha256:nope", DigestInvalid),
        ("/v2/a/manifests/-bad", ManifestInvalid),
        ("/v2/a/manifests/" + "t" * 129, ManifestInvalid),
        ("/v2/Bad/blobs/sha256:abc", NameInvalid),  # the name is checked first
        ("/v2/Bad/manifests/-bad", NameInvalid),
    ],
)
def test_parse_endpoint_refuses_malformed_values(path: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_endpoint(path)


def test_parse_endpoint_bad_name_and_unknown_path() -> None:
    with pytest.raises(NameInvalid):
        parse_endpoint("/v2/UPPER/tags/list")
    with pytest.raises(NotFound):
        parse_endpoint("/v2/a/unknown")
