"""Organizations in repository names: how a client's address maps to an internal name.

Every repository's internal name is ``<org-slug>/<path>``. Clients reach it three ways:

1. org subdomain: Host ``acme.<base>`` and name ``your/app`` → ``acme/your/app``;
2. path style on any other host: name ``acme/your/app`` → org ``acme``, same internal name;
3. legacy project URL on any other host: a one-component name ``p1x2`` is a project id the
   caller resolves to its org → ``<org>/p1x2``.

Only hosts exactly one label below the configured base domain are org hosts; the base domain
itself, deeper subdomains, other hosts and IP addresses are addressed path style.

Where an org is named (subdomain or path style), its id works as well as its slug: ids of
orgs created now are DNS labels (:data:`ORG_ID`), and a label of that shape is looked up as an
id first (:func:`core.auth.gate.resolve_name`), then taken as a slug. Older ids (``org_...``)
are no DNS labels: those orgs are named by slug. No new slug may look like an id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import NameInvalid
from core.reference import RepositoryName, parse_repository_name

#: An org slug is a DNS label and a repository-name component at once.
ORG_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


#: The id of an org created now: ``org`` and 16 of ``[a-z0-9]``, a DNS label like a slug.
ORG_ID = re.compile(r"org[a-z0-9]{16}")


def is_org_slug(text: str) -> bool:
    return ORG_SLUG.fullmatch(text) is not None


def is_org_id(text: str) -> bool:
    """Whether ``text`` has the shape of an org id usable as a DNS label."""
    return ORG_ID.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Addressed:
    """What a request names, before any lookup.

    ``org`` is None only for the legacy form; then ``project_id`` is set and the caller must
    resolve it to an org. ``project_id`` is set whenever ``path`` is one component (it may be a
    project repository).
    """

    org: str | None
    path: str
    project_id: str | None


def _strip_port(host: str) -> str:
    if host.startswith("["):  # IPv6 literal, maybe with a port
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host  # no port, or a bare IPv6 address


def _normalise_host(host: str) -> str:
    return _strip_port(host.strip().lower()).rstrip(".")


def org_from_host(host: str, base_domain: str | None) -> str | None:
    """The org whose subdomain ``host`` is, or None when ``host`` is addressed path style."""
    if not base_domain:
        return None
    base = _normalise_host(base_domain)
    name = _normalise_host(host)
    if not base or not name.endswith("." + base):
        return None
    label = name[: -len(base) - 1]
    if "." in label or not is_org_slug(label):
        return None
    return label


def internal_name(org: str, path: str) -> RepositoryName:
    """``<org>/<path>``; NameInvalid when ``org`` is not a slug or the result is not a name."""
    if not is_org_slug(org):
        raise NameInvalid(detail={"org": org[:100]})
    return parse_repository_name(f"{org}/{path}")


def org_of(internal: RepositoryName | str) -> str:
    """The org slug of an internal repository name (its first component)."""
    return str(internal).partition("/")[0]


def _project_id(path: str) -> str | None:
    return path if "/" not in path else None


def address(host: str, name: RepositoryName, base_domain: str | None) -> Addressed:
    """Split a client-visible repository name into org and path.

    Raises NameInvalid (never anything else) when the path-style org component is not a slug
    or the internal name would not be a valid repository name.
    """
    org = org_from_host(host, base_domain)
    text = name.value
    if org is not None:
        internal_name(org, text)  # validates the length of the combined name
        return Addressed(org, text, _project_id(text))
    head, sep, rest = text.partition("/")
    if not sep:
        return Addressed(None, text, text)
    if not is_org_slug(head):
        raise NameInvalid("invalid organization in repository name", detail={"name": text[:300]})
    return Addressed(head, rest, _project_id(rest))
