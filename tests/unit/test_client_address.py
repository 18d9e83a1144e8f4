import pytest

from core.web.client_address import client_address, parse_networks

EDGES = parse_networks("127.0.0.1, 10.1.0.0/16")


def test_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    assert client_address("203.0.113.9", "198.51.100.1", ()) == "203.0.113.9"


def test_a_trusted_edge_names_the_client() -> None:
    assert client_address("127.0.0.1", "198.51.100.7", EDGES) == "198.51.100.7"


def test_a_spoofed_hop_before_the_edge_is_not_believed() -> None:
    # The client wrote "1.2.3.4" itself; the edge appended the real address.
    assert client_address("10.1.2.3", "1.2.3.4, 198.51.100.7", EDGES) == "198.51.100.7"


def test_an_untrusted_peer_cannot_choose_its_address() -> None:
    assert client_address("198.51.100.7", "127.0.0.1", EDGES) == "198.51.100.7"


def test_bad_networks_are_refused() -> None:
    with pytest.raises(ValueError):
        parse_networks("not-an-ip")
