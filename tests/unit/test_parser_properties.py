"""Property tests over every parser of client input: whatever arrives in a header, a path or
a query, the parser returns a valid value or raises the registry error it is documented to
raise (a 4xx with the OCI envelope), never anything else (a 500).

Text strategies include the troublemakers the hostile campaign used: Unicode digits
(Arabic-Indic "\\u0660-\\u0661"), thousands of digits (Python's int-string limit), NUL,
latin-1 bytes as hypercorn decodes them.
"""

from __future__ import annotations

import base64

from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.auth.credentials import parse_authorization
from core.auth.scopes import Access, parse_scopes, required_access
from core.digest import Digest, parse_digest
from core.endpoints import Kind, parse_endpoint
from core.errors import (
    DigestInvalid,
    ManifestInvalid,
    NameInvalid,
    NotFound,
    PaginationNumberInvalid,
    RangeInvalid,
)
from core.pagination import MAX_PAGE, parse_page
from core.ranges import BEYOND_ANY_SIZE, ByteRange, parse_content_range, parse_range
from core.reference import (
    RepositoryName,
    Tag,
    parse_manifest_reference,
    parse_repository_name,
    parse_tag,
)
from core.tenancy import address, org_from_host
from core.web.client_address import client_address, parse_networks

HOSTILE_PIECES = [
    "bytes=",
    "-",
    ",",
    "/",
    "*",
    ":",
    "@",
    "%00",
    "\x00",
    "\u0660",
    "\u0661",
    "\uff19",
    "²",
    "\xa0",
    "\u2028",
    "sha256:",
    "v2",
    "blobs",
    "uploads",
    "manifests",
    "tags/list",
    "referrers",
    "_catalog",
    "0",
    "9" * 40,
    "1" * 4301,
    " ",
    "\t",
    "..",
    "a",
    "A",
]
#: Text built from pieces a parser has to handle, and arbitrary text.
hostile_text = st.one_of(
    st.lists(st.sampled_from(HOSTILE_PIECES), max_size=12).map("".join),
    st.text(max_size=200),
    st.binary(max_size=100).map(lambda raw: raw.decode("latin-1")),  # as hypercorn decodes
)
digits = st.text(alphabet="0123456789", min_size=1, max_size=5000)


@settings(max_examples=300)
@given(hostile_text, st.integers(0, 2**63))
@example("bytes=" + "1" * 4301 + "-", 100)
@example("bytes=-" + "1" * 4301, 100)
@example("bytes=0-" + "1" * 4301, 100)
@example("bytes=\u0660-\u0661", 100)
@example("bytes=" + " " * 60_000 + "1", 100)  # quadratic backtracking once: within the deadline
def test_range_headers_resolve_or_are_unsatisfiable(header: str, size: int) -> None:
    try:
        resolved = parse_range(header, size)
    except RangeInvalid as exc:
        assert exc.status == 416
        assert exc.headers["Content-Range"] == f"bytes */{size}"
        return
    if resolved is not None:
        assert 0 <= resolved.first <= resolved.last < size


def _value(digits: str) -> int | None:
    """The number, or None when it is longer than any object size."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= 19 else None


@given(digits, digits, st.integers(1, 2**63 - 1))
def test_long_range_positions_mean_past_the_end(first: str, last: str, size: int) -> None:
    start, end = _value(first), _value(last)
    try:
        resolved = parse_range(f"bytes={first}-{last}", size)
    except RangeInvalid:
        assert start is None or start >= size
        return
    if resolved is None:  # last < first: ignored (None stands for past any size)
        assert end is not None and (start is None or end < start)
    else:
        assert resolved.first == start
        assert resolved.last == (size - 1 if end is None else min(end, size - 1))


@settings(max_examples=300)
@given(hostile_text)
@example("0-" + "5" * 5000)
@example("\u0660-\u0661")
@example("bytes 0-" + "9" * 19)
@example("1" * 30_000 + "-" + " " * 30_000)
def test_content_ranges_parse_or_are_invalid(header: str) -> None:
    try:
        parsed = parse_content_range(header)
    except RangeInvalid as exc:
        assert exc.status == 416
        return
    assert 0 <= parsed.first <= parsed.last <= BEYOND_ANY_SIZE


@given(st.integers(0, 10**17), st.integers(0, 10**17))
def test_content_ranges_round_trip(first: int, length: int) -> None:
    assert parse_content_range(f"{first}-{first + length}") == ByteRange(first, first + length)


@settings(max_examples=500)
@given(hostile_text)
@example("/v2/acme/app/blobs/uploads/%00")
@example("/v2/acme/app\x00/manifests/v1")
@example("/v2/" + "a/" * 200 + "tags/list")
def test_paths_parse_into_endpoints_or_are_refused(rest: str) -> None:
    for path in (rest, "/v2/" + rest, "/v2/acme/" + rest):
        try:
            endpoint = parse_endpoint(path)
        except (NotFound, NameInvalid, DigestInvalid, ManifestInvalid) as exc:
            assert 400 <= exc.status < 500
            continue
        if endpoint.name is not None:
            assert parse_repository_name(endpoint.name.value) == endpoint.name


@given(hostile_text)
def test_names_tags_digests_and_references(text: str) -> None:
    for parse, errors in (
        (parse_repository_name, NameInvalid),
        (parse_tag, ManifestInvalid),
        (parse_digest, DigestInvalid),
        (parse_manifest_reference, (ManifestInvalid, DigestInvalid)),
    ):
        try:
            value = parse(text)
        except errors:
            continue
        assert isinstance(value, RepositoryName | Tag | Digest)
        assert str(value) == text


@given(st.from_regex(r"\A[a-z0-9]{1,20}(/[a-z0-9]{1,20}([._-][a-z0-9]{1,20}){0,3}){0,3}\Z"))
def test_valid_names_round_trip(text: str) -> None:
    assert parse_repository_name(text).value == text


@given(st.dictionaries(st.sampled_from(["n", "last", "x"]), hostile_text | digits))
@example({"n": "1" * 5000})
@example({"n": "\u0663"})
def test_page_parameters_parse_or_are_invalid(args: dict[str, str]) -> None:
    try:
        page = parse_page(args)
    except PaginationNumberInvalid as exc:
        assert exc.status == 400
        return
    assert 0 <= page.n <= MAX_PAGE


@given(
    st.lists(hostile_text, max_size=4),
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "get", "BREW"]),
    st.sampled_from(list(Kind)),
    hostile_text,
    st.dictionaries(st.sampled_from(["mount", "from", "digest"]), hostile_text),
)
def test_scopes_and_required_access_never_fail(
    scopes: list[str], method: str, kind: Kind, name: str, query: dict[str, str]
) -> None:
    for access in parse_scopes(scopes):
        assert isinstance(access, Access) and access.actions
    needed = required_access(method, kind, name, query)
    assert all(isinstance(access, Access) for access in needed)


@given(st.one_of(hostile_text, st.binary(max_size=60).map(base64.b64encode).map(bytes.decode)))
@example("Basic " + base64.b64encode(b"\xff\xfe:\x00").decode())
@example("Basic \x00")
def test_authorization_headers_never_fail(value: str) -> None:
    for header in (value, "Basic " + value, "Bearer " + value):
        credentials = parse_authorization(header)
        assert credentials is None or isinstance(credentials.secret, str)


@given(hostile_text, hostile_text, st.sampled_from(["", "registry.example", "xn--a.example"]))
def test_tenancy_addresses_resolve_or_are_invalid_names(
    host: str, name: str, base_domain: str
) -> None:
    org_from_host(host, base_domain)  # never raises
    try:
        repository = parse_repository_name(name)
    except NameInvalid:
        return
    try:
        addressed = address(host, repository, base_domain)
    except NameInvalid:
        return
    assert addressed.org is not None or addressed.project_id is not None


EDGES = parse_networks("127.0.0.1, 10.0.0.0/8")


@given(st.none() | hostile_text, st.none() | hostile_text)
def test_client_addresses_never_fail(remote: str | None, forwarded: str | None) -> None:
    assert isinstance(client_address(remote, forwarded, EDGES), str)
    assert client_address(remote, forwarded, ()) == (remote or "-")
