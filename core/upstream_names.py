"""Names of upstream registries an edge mirrors, and how their repositories are addressed.

An upstream's name is the registry host clients know it by (``docker.io``, ``ghcr.io``,
``registry.example.com``): a repository-name component that contains a dot. The dot is what
keeps it apart from this registry's own names: an org slug never has one, so a first name
component ``docker.io`` can only mean the mirror, and an org's upstream ``acme/ghcr.io/...``
only shadows org repositories whose second component has a dot.

Docker Hub's convention: a one-component name is an official image under ``library/``
(``alpine`` is ``library/alpine``), whoever asks. It applies to the upstream named
``docker.io`` and to any upstream whose URL is Docker Hub's registry.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from core.reference import RepositoryName, parse_repository_name

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
MAX_UPSTREAM_NAME_LENGTH = 100
DOCKER_HUB = "docker.io"
DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def is_upstream_name(text: str) -> bool:
    """A registry host as a name component: lower case, with at least one dot."""
    return (
        len(text) <= MAX_UPSTREAM_NAME_LENGTH
        and "." in text
        and _COMPONENT.fullmatch(text) is not None
    )


def check_upstream_url(url: str) -> str:
    """``url`` without a trailing slash; ValueError unless it is an http(s) URL of a host
    (with no path, query or credentials: the registry's ``/v2/`` is at its root)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"an upstream URL is http(s)://HOST[:PORT], not {url[:200]!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("an upstream URL carries no credentials, query or fragment")
    if parts.path not in ("", "/"):
        raise ValueError("an upstream URL has no path: the registry's /v2/ is at its root")
    return f"{parts.scheme}://{parts.netloc}"


def is_docker_hub(name: str, url: str) -> bool:
    return name == DOCKER_HUB or (urlsplit(url).hostname or "") in DOCKER_HUB_HOSTS


def upstream_repository(path: str, *, docker_hub: bool) -> RepositoryName:
    """The repository ``path`` names at the upstream (``library/`` added for Docker Hub's
    one-component names); NameInvalid when it is not a repository name."""
    if docker_hub and "/" not in path:
        path = f"library/{path}"
    return parse_repository_name(path)


def is_private_host(url: str) -> bool:
    """Whether ``url`` names a host on this machine or a private network literally
    (``localhost``, a loopback, private, link-local, unspecified or reserved address): an
    org pointing the edges there would make them fetch from inside the operator's network.
    A public name that resolves to such an address is not caught here."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not address.is_global
