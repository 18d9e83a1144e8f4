"""The operator's mirrors: from settings (``[[mirrors]]``) and flags to site specifications.

Flags: ``--mirror NAME=URL`` (repeatable) adds a mirror or changes the URL of one the settings
file has; ``--mirror-access NAME=anonymous|authenticated`` sets its access. Each mirror is
checked here, at start, and every failure is a ``ConfigError`` naming what to fix: a name
that is not a registry host (it must contain a dot: ``docker.io``), a URL that is not
``http(s)://HOST[:PORT]``, an unknown access mode, a name given twice, a username without a
password file or the reverse, an unreadable or empty password file. Passwords are read from
their files here and never logged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence

from config.settings import EdgeSettings, MirrorSettings
from core.auth.access import Mirror
from core.client.credentials import Credentials
from core.errors import ConfigError
from core.upstream_names import check_upstream_url, is_docker_hub, is_upstream_name
from edge.mirror.site import SiteSpec

log = logging.getLogger("depot.edge.mirror")

AUTHENTICATED, ANONYMOUS = "authenticated", "anonymous"
ACCESS_MODES = (AUTHENTICATED, ANONYMOUS)
NO_DEFAULT = "none"


def _pairs(values: Iterable[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"{flag} takes NAME=VALUE, not {value[:200]!r}")
        pairs.append((name.strip().lower(), rest.strip()))
    return pairs


def with_flags(
    settings: EdgeSettings, mirrors: Sequence[str], access: Sequence[str]
) -> EdgeSettings:
    """``settings`` with the ``--mirror`` and ``--mirror-access`` flags applied."""
    by_name = {m.name.lower(): m for m in settings.mirrors}
    order = list(by_name)
    for name, url in _pairs(mirrors, "--mirror"):
        if name not in by_name:
            order.append(name)
            by_name[name] = MirrorSettings(name=name, url=url)
        else:
            by_name[name] = dataclasses.replace(by_name[name], url=url)
    for name, mode in _pairs(access, "--mirror-access"):
        if name not in by_name:
            raise ConfigError(f"--mirror-access {name}: no mirror named {name!r}")
        by_name[name] = dataclasses.replace(by_name[name], access=mode.lower())
    return dataclasses.replace(settings, mirrors=tuple(by_name[name] for name in order))


def site_specs(settings: EdgeSettings) -> list[SiteSpec]:
    """The operator's mirrors, checked, with passwords read from their files."""
    specs: list[SiteSpec] = []
    seen: set[str] = set()
    for mirror in settings.mirrors:
        spec = _spec(mirror)
        if spec.name in seen:
            raise ConfigError(f"mirror {spec.name!r} is configured twice")
        seen.add(spec.name)
        specs.append(spec)
    default_mirror(settings, specs)  # checked now
    return specs


def log_access(specs: Sequence[SiteSpec]) -> None:
    """Say at start who may pull through each mirror (anonymous: loudly)."""
    for spec in specs:
        if spec.resource.anonymous:
            log.warning(
                "mirror %s (%s): ANONYMOUS access, anyone reaching this edge pulls through it",
                spec.name,
                spec.url,
            )
        else:
            log.info("mirror %s (%s): authenticated access", spec.name, spec.url)


def default_mirror(settings: EdgeSettings, specs: Sequence[SiteSpec]) -> str | None:
    """The mirror for names that are not an org's, asked without ``ns``: the setting, else
    ``docker.io`` when mirrored; None for none."""
    wanted = settings.default_mirror.strip().lower()
    names = {spec.name for spec in specs}
    if wanted == NO_DEFAULT:
        return None
    if not wanted:
        return "docker.io" if "docker.io" in names else None
    if wanted not in names:
        raise ConfigError(f"default_mirror {wanted!r} is not a configured mirror")
    return wanted


def _spec(mirror: MirrorSettings) -> SiteSpec:
    name = mirror.name.strip().lower()
    if not is_upstream_name(name):
        raise ConfigError(
            f"mirror name {mirror.name[:100]!r}: use the registry's host name, e.g. docker.io "
            "(lower case, with a dot: it can then never be an org's name)"
        )
    try:
        url = check_upstream_url(mirror.url)
    except ValueError as exc:
        raise ConfigError(f"mirror {name}: {exc}") from exc
    access = mirror.access.strip().lower()
    if access not in ACCESS_MODES:
        raise ConfigError(f"mirror {name}: access is one of {', '.join(ACCESS_MODES)}")
    return SiteSpec(
        label=name,
        name=name,
        url=url,
        credentials=_credentials(name, mirror),
        resource=Mirror(name, None, anonymous=access == ANONYMOUS),
        namespace=f"mirror:{name}",
        docker_hub=is_docker_hub(name, url),
    )


def _credentials(name: str, mirror: MirrorSettings) -> Credentials | None:
    if not mirror.username and mirror.password_file is None:
        return None
    if not mirror.username or mirror.password_file is None:
        raise ConfigError(f"mirror {name}: give both username and password_file, or neither")
    try:
        password = mirror.password_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"mirror {name}: cannot read {mirror.password_file}: {exc}") from exc
    if not password:
        raise ConfigError(f"mirror {name}: {mirror.password_file} is empty")
    return Credentials(mirror.username, password)
