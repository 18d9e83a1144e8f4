"""The client's address behind trusted proxies (edges forward ``X-Forwarded-For``)."""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"127.0.0.1, 10.0.0.0/8"`` → networks; raises ValueError on a bad entry."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()
    )


def client_address(
    remote: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]
) -> str:
    """Walk ``X-Forwarded-For`` from the right while the hop is a trusted proxy; the first
    untrusted address is the client. Without trusted proxies the header is ignored (anyone
    can write it)."""
    hops = [remote or "-"]
    if forwarded_for and trusted:
        hops = [remote or "-", *reversed([h.strip() for h in forwarded_for.split(",")])]
    for hop in hops:
        if not _is_trusted(hop, trusted):
            return hop
    return hops[-1]


def is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    """Whether ``address`` (an IP address as text) is one of the ``trusted`` proxies."""
    return _is_trusted(address, trusted)


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
