"""Reading a registry's credentials as Docker does: config.json ``auths``, ``credHelpers`` and
``credsStore`` through real ``docker-credential-*`` programs (shell scripts on ``PATH``)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
import trio

from depot.docker_credentials import (
    DockerCredentialsError,
    RegistryLogin,
    lookup,
    registry_host,
)

SECRET = "s3cret-do-not-print"


def write_config(directory: Path, document: object) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(document))


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def install_helper(bin_dir: Path, name: str, answers: dict[str, tuple[str, str]]) -> Path:
    """A ``docker-credential-<name>`` that answers ``get`` for the given server addresses,
    records what it was asked in ``<bin_dir>/<name>.asked``, and fails for anything else."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for server, (user, secret) in answers.items():
        answer = json.dumps({"ServerURL": server, "Username": user, "Secret": secret})
        entries.append(f"  \"{server}\") printf '%s' '{answer}' ;;")
    cases = "\n".join(entries)
    script = bin_dir / f"docker-credential-{name}"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 2\n'
        "read -r server\n"
        f'printf \'%s\\n\' "$server" >> "{bin_dir}/{name}.asked"\n'
        'case "$server" in\n'
        f"{cases}\n"
        '  *) echo "credentials not found in native keychain"; exit 1 ;;\n'
        "esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def environ(config: Path, bin_dir: Path | None = None) -> dict[str, str]:
    path = os.environ.get("PATH", "")
    if bin_dir is not None:
        path = f"{bin_dir}:{path}"
    return {"DOCKER_CONFIG": str(config), "PATH": path, "HOME": str(config.parent)}


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("registry.example/acme/app:v1", "registry.example"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("docker.io/library/alpine", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("Registry.Example:443", "registry.example:443"),
    ],
)
def test_registry_host(text: str, host: str) -> None:
    assert registry_host(text) == host


async def test_auths_entries_in_every_spelling(tmp_path: Path) -> None:
    config = tmp_path / "docker"
    write_config(
        config,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": basic("hubuser", "hubpass")},
                "http://127.0.0.1:5000": {"auth": basic("x-token", SECRET)},
                "registry.example": {"username": "alice", "password": "pw"},
                "quay.io": {"identitytoken": "refresh"},
            }
        },
    )
    env = environ(config)
    with trio.fail_after(10):
        assert await lookup("docker.io/library/alpine", env) == RegistryLogin(
            "hubuser", "hubpass", "auths"
        )
        assert await lookup("127.0.0.1:5000/acme/app", env) == RegistryLogin(
            "x-token", SECRET, "auths"
        )
        assert await lookup("registry.example/app", env) == RegistryLogin("alice", "pw", "auths")
        found = await lookup("quay.io/org/app", env)
        assert found is not None and (found.username, found.password) == ("<token>", "refresh")
        assert await lookup("ghcr.io/owner/app", env) is None


async def test_no_config_means_anonymous(tmp_path: Path) -> None:
    with trio.fail_after(10):
        assert await lookup("registry.example/app", environ(tmp_path / "absent")) is None


async def test_cred_helpers_win_over_auths_and_creds_store(tmp_path: Path) -> None:
    config, bin_dir = tmp_path / "docker", tmp_path / "bin"
    install_helper(bin_dir, "pick", {"ghcr.io": ("bot", SECRET)})
    install_helper(bin_dir, "store", {"https://index.docker.io/v1/": ("hub", "from-store")})
    write_config(
        config,
        {
            "auths": {"ghcr.io": {"auth": basic("stale", "stale")}},
            "credHelpers": {"ghcr.io": "pick"},
            "credsStore": "store",
        },
    )
    env = environ(config, bin_dir)
    with trio.fail_after(10):
        assert await lookup("ghcr.io/owner/app", env) == RegistryLogin("bot", SECRET, "helper:pick")
        # Docker Hub goes to the store, asked with Hub's legacy server address.
        assert await lookup("docker.io/library/alpine", env) == RegistryLogin(
            "hub", "from-store", "helper:store"
        )
        # Nothing in the store for this one: falls back to auths (none), so anonymous.
        assert await lookup("registry.example/app", env) is None
    assert (bin_dir / "store.asked").read_text().split() == [
        "https://index.docker.io/v1/",
        "registry.example",
    ]


async def test_a_helper_without_the_entry_falls_back_to_auths(tmp_path: Path) -> None:
    config, bin_dir = tmp_path / "docker", tmp_path / "bin"
    install_helper(bin_dir, "empty", {})
    write_config(
        config,
        {"auths": {"registry.example": {"auth": basic("u", "p")}}, "credsStore": "empty"},
    )
    with trio.fail_after(10):
        found = await lookup("registry.example/app", environ(config, bin_dir))
    assert found == RegistryLogin("u", "p", "auths")


async def test_failures_name_the_problem_never_the_secret(tmp_path: Path) -> None:
    config = tmp_path / "docker"
    write_config(config, {"credsStore": "missing"})
    with trio.fail_after(10), pytest.raises(DockerCredentialsError, match="not installed"):
        await lookup("registry.example/app", environ(config, tmp_path / "nobin"))

    write_config(config, {"auths": {"registry.example": {"auth": "%%%"}}})
    with trio.fail_after(10), pytest.raises(DockerCredentialsError, match="not base64"):
        await lookup("registry.example/app", environ(config))

    (config / "config.json").write_text("{not json")
    with trio.fail_after(10), pytest.raises(DockerCredentialsError, match="not valid JSON"):
        await lookup("registry.example/app", environ(config))


def test_repr_hides_the_password() -> None:
    login = RegistryLogin("bot", SECRET, "auths")
    assert SECRET not in repr(login) and SECRET not in str(login)
