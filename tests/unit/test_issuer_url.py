"""Which OIDC issuer URLs a trust relationship may name."""

import pytest

from origin.auth.issuer_url import MAX_ISSUER_LENGTH, check_issuer, ip_literal

ACCEPTED = [
    "https://token.actions.githubusercontent.com",
    "https://gitlab.example.com/",
    "https://issuer.example:8443/org",
    "https://8.8.8.8",
    "https://[2001:4860:4860::8888]",
    "https://xn--bcher-kva.example",
]

REFUSED = [
    "http://token.actions.githubusercontent.com",
    "ftp://issuer.example",
    "issuer.example",
    "https://",
    "https://10.0.0.1",
    "https://192.168.1.20/issuer",
    "https://172.16.0.1",
    "https://100.64.0.1",
    "https://0.0.0.0",
    "https://169.254.169.254/latest",
    "https://[fe80::1]",
    "https://[fe80::1%25eth0]",
    "https://[fd00::1]",
    "https://[::ffff:10.0.0.1]",
    "https://[::ffff:169.254.169.254]",
    "https://[2002:a00:1::]",  # 6to4 of 10.0.0.1
    "https://user:pass@issuer.example",
    "https://user@issuer.example",
    "https://issuer.example/?x=1",
    "https://issuer.example/?",
    "https://issuer.example/#frag",
    "https://issuer.example:99999",
    "https://iss uer.example",
    "https://bücher.example",
    "https://%31%30.0.0.1",
    "https://" + "a" * MAX_ISSUER_LENGTH,
]

LOOPBACK = [
    "https://127.0.0.1:8443",
    "http://127.0.0.1:8080",
    "https://[::1]",
    "https://[::ffff:127.0.0.1]",
    "https://2130706433",
    "https://0x7f000001",
    "https://127.1",
    "https://localhost",
    "https://localhost.",
    "http://api.localhost",
]


@pytest.mark.parametrize("issuer", ACCEPTED)
def test_public_https_issuers_are_accepted(issuer: str) -> None:
    check_issuer(issuer)


@pytest.mark.parametrize("issuer", REFUSED)
@pytest.mark.parametrize("allow_insecure_loopback", [False, True])
def test_refused_issuers(issuer: str, allow_insecure_loopback: bool) -> None:
    with pytest.raises(ValueError):
        check_issuer(issuer, allow_insecure_loopback=allow_insecure_loopback)


@pytest.mark.parametrize("issuer", LOOPBACK)
def test_loopback_only_when_allowed(issuer: str) -> None:
    with pytest.raises(ValueError):
        check_issuer(issuer)
    check_issuer(issuer, allow_insecure_loopback=True)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("cafe.example", None),
        ("dead.beef", None),
    ],
)
def test_ip_literal_spellings(host: str, address: str | None) -> None:
    found = ip_literal(host)
    assert (None if found is None else str(found)) == address
