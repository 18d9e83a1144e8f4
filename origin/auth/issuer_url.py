"""Which OIDC issuer URLs a trust relationship may name (pure: no I/O, no DNS).

The origin fetches an issuer's discovery document and keys from the URL a trust relationship
names, so an org admin could otherwise point the origin at internal services (cloud metadata
endpoints, databases on private addresses). Refused: anything but https; credentials, a query
or a fragment in the URL; ``localhost`` and its subdomains; IP literals outside the public
internet, in every spelling a resolver accepts (``127.1``, ``0x7f000001``, ``2130706433``,
IPv4-mapped and 6to4/Teredo IPv6). With ``allow_insecure_loopback`` (tests and local
experiments), loopback over http or https is accepted; private ranges never are.

A public name that resolves to a private address passes here: that is for the fetch to guard.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

MAX_ISSUER_LENGTH = 2048
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NUMERIC_IPV4 = re.compile(r"[0-9a-fx.]+")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_issuer(issuer: str, *, allow_insecure_loopback: bool = False) -> None:
    """Return if ``issuer`` may be trusted; ``ValueError`` saying why not otherwise."""
    if len(issuer) > MAX_ISSUER_LENGTH:
        raise ValueError(f"the issuer is longer than {MAX_ISSUER_LENGTH} characters")
    try:
        parts = urlsplit(issuer)
        host = (parts.hostname or "").rstrip(".")
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError("the issuer is not a URL") from exc
    if "@" in parts.netloc or "?" in issuer or "#" in issuer:
        raise ValueError("the issuer must not carry credentials, a query or a fragment")
    if not host:
        raise ValueError("the issuer must be an https URL with a host")
    address = ip_literal(host)
    if address is None and _HOSTNAME.fullmatch(host) is None:
        raise ValueError("the issuer's host is not a valid host name (IDN: use punycode)")
    loopback = host == "localhost" or host.endswith(".localhost")
    loopback = loopback or (address is not None and address.is_loopback)
    if allow_insecure_loopback and loopback and parts.scheme in ("http", "https"):
        return
    if parts.scheme != "https":
        raise ValueError("the issuer must be an https URL")
    if loopback or (address is not None and not address.is_global):
        raise ValueError("the issuer must be on the public internet, not a private address")


def ip_literal(host: str) -> Address | None:
    """The address ``host`` (lower case, no brackets) spells, if it is one; for IPv6 that
    embeds an IPv4 address (mapped, 6to4, Teredo), the embedded IPv4 address."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        if not _NUMERIC_IPV4.fullmatch(host):
            return None
        try:  # the legacy forms getaddrinfo also accepts
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address):
        teredo = address.teredo
        embedded = address.ipv4_mapped or address.sixtofour or (teredo[1] if teredo else None)
        if embedded is not None:
            return embedded
    return address
