"""The operator's mirrors: TOML tables and flags to checked site specifications
(config/loader.py, edge/mirror/config.py), and the upstream naming rules
(core/upstream_names.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import load
from config.settings import EdgeSettings, MirrorSettings
from core.errors import ConfigError, NameInvalid
from core.upstream_names import (
    check_upstream_url,
    is_docker_hub,
    is_private_host,
    is_upstream_name,
    upstream_repository,
)
from edge.mirror.config import default_mirror, site_specs, with_flags

PREFIX = "DEPOT_EDGE_"


def test_mirrors_are_a_list_of_tables(tmp_path: Path) -> None:
    password = tmp_path / "hub.password"
    password.write_text("s3cret\n")
    file = tmp_path / "edge.toml"
    file.write_text(
        'upstream = "http://origin"\n'
        "[[mirrors]]\n"
        'name = "docker.io"\n'
        'url = "https://registry-1.docker.io"\n'
        'username = "me"\n'
        f'password_file = "{password}"\n'
        "[[mirrors]]\n"
        'name = "ghcr.io"\n'
        'url = "https://ghcr.io/"\n'
        'access = "anonymous"\n'
    )
    settings = load(EdgeSettings, file=file, environ={}, prefix=PREFIX)
    assert settings.mirrors == (
        MirrorSettings("docker.io", "https://registry-1.docker.io", "me", password),
        MirrorSettings("ghcr.io", "https://ghcr.io/", access="anonymous"),
    )
    hub, ghcr = site_specs(settings)
    assert (hub.name, hub.url, hub.docker_hub, hub.resource.anonymous) == (
        "docker.io",
        "https://registry-1.docker.io",
        True,
        False,
    )
    assert hub.credentials is not None and hub.credentials.password == "s3cret"
    assert "s3cret" not in repr(hub)
    assert (ghcr.url, ghcr.docker_hub, ghcr.credentials, ghcr.resource.anonymous) == (
        "https://ghcr.io",
        False,
        None,
        True,
    )
    assert hub.namespace != ghcr.namespace
    assert default_mirror(settings, [hub, ghcr]) == "docker.io"


def test_unknown_keys_in_a_table_are_errors(tmp_path: Path) -> None:
    file = tmp_path / "edge.toml"
    file.write_text('[[mirrors]]\nname = "docker.io"\nurl = "https://x.example"\npasword = "x"\n')
    with pytest.raises(ConfigError, match=r"mirrors\[0\]: unknown settings: pasword"):
        load(EdgeSettings, file=file, environ={}, prefix=PREFIX)
    file.write_text('mirrors = "docker.io"\n')
    with pytest.raises(ConfigError, match="list of tables"):
        load(EdgeSettings, file=file, environ={}, prefix=PREFIX)


def test_flags_add_mirrors_and_set_their_access(tmp_path: Path) -> None:
    file = tmp_path / "edge.toml"
    file.write_text('[[mirrors]]\nname = "quay.io"\nurl = "https://quay.io"\nusername = "u"\n')
    settings = load(EdgeSettings, file=file, environ={}, prefix=PREFIX)
    flagged = with_flags(
        settings,
        ["docker.io=http://127.0.0.1:5000", "quay.io=https://quay.example"],
        ["Docker.io=anonymous"],
    )
    assert flagged.mirrors == (
        MirrorSettings("quay.io", "https://quay.example", "u"),
        MirrorSettings("docker.io", "http://127.0.0.1:5000", access="anonymous"),
    )
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        with_flags(settings, ["docker.io"], [])
    with pytest.raises(ConfigError, match=r"no mirror named 'ghcr\.io'"):
        with_flags(settings, [], ["ghcr.io=anonymous"])


@pytest.mark.parametrize(
    ("mirror", "message"),
    [
        (MirrorSettings("dockerhub", "https://registry-1.docker.io"), "with a dot"),
        (MirrorSettings("Docker.IO!", "https://registry-1.docker.io"), "with a dot"),
        (MirrorSettings("docker.io", "ftp://registry-1.docker.io"), "http"),
        (MirrorSettings("docker.io", "https://registry-1.docker.io/v2"), "no path"),
        (MirrorSettings("docker.io", "https://u:p@registry-1.docker.io"), "no credentials"),
        (MirrorSettings("docker.io", "https://h.example", access="open"), "access is one of"),
        (MirrorSettings("docker.io", "https://h.example", username="u"), "both"),
        (MirrorSettings("docker.io", "https://h.example", password_file=Path("/x")), "both"),
        (
            MirrorSettings("docker.io", "https://h.example", "u", Path("/nonexistent/pw")),
            "cannot read",
        ),
    ],
)
def test_bad_mirrors_are_refused_at_start(mirror: MirrorSettings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        site_specs(EdgeSettings(mirrors=(mirror,)))


def test_duplicates_empty_passwords_and_defaults(tmp_path: Path) -> None:
    hub = MirrorSettings("docker.io", "https://registry-1.docker.io")
    with pytest.raises(ConfigError, match="twice"):
        site_specs(EdgeSettings(mirrors=(hub, hub)))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        site_specs(
            EdgeSettings(mirrors=(MirrorSettings("docker.io", "https://h.example", "u", empty),))
        )
    ghcr = MirrorSettings("ghcr.io", "https://ghcr.io")
    assert (
        default_mirror(EdgeSettings(mirrors=(ghcr,)), site_specs(EdgeSettings(mirrors=(ghcr,))))
        is None
    )
    chosen = EdgeSettings(mirrors=(ghcr, hub), default_mirror="ghcr.io")
    assert default_mirror(chosen, site_specs(chosen)) == "ghcr.io"
    nowhere = EdgeSettings(mirrors=(hub,), default_mirror="none")
    assert default_mirror(nowhere, site_specs(nowhere)) is None
    with pytest.raises(ConfigError, match="not a configured mirror"):
        site_specs(EdgeSettings(mirrors=(hub,), default_mirror="quay.io"))


def test_upstream_names_and_docker_hubs_library() -> None:
    for name in ("docker.io", "ghcr.io", "registry.example.com", "a.b"):
        assert is_upstream_name(name), name
    for name in ("dockerhub", "acme", "Docker.io", "docker.io:5000", ".io", "a..b", ""):
        assert not is_upstream_name(name), name
    assert check_upstream_url("https://ghcr.io/") == "https://ghcr.io"
    assert check_upstream_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert is_docker_hub("docker.io", "http://127.0.0.1:5000")
    assert is_docker_hub("hub.example", "https://registry-1.docker.io")
    assert not is_docker_hub("ghcr.io", "https://ghcr.io")
    assert upstream_repository("alpine", docker_hub=True).value == "library/alpine"
    assert upstream_repository("library/alpine", docker_hub=True).value == "library/alpine"
    assert upstream_repository("me/app", docker_hub=True).value == "me/app"
    assert upstream_repository("alpine", docker_hub=False).value == "alpine"
    with pytest.raises(NameInvalid):
        upstream_repository("Alpine", docker_hub=True)


def test_private_hosts() -> None:
    for url in (
        "http://localhost:5000",
        "http://registry.localhost",
        "http://127.0.0.1",
        "http://10.1.2.3",
        "http://192.168.0.10:5000",
        "http://169.254.169.254",
        "http://0.0.0.0",
        "http://[::1]:5000",
        "http://[fd00::1]",
    ):
        assert is_private_host(url), url
    for url in ("https://ghcr.io", "https://registry-1.docker.io", "http://8.8.8.8"):
        assert not is_private_host(url), url
