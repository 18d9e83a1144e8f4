"""``depot`` credentials: flags > environment > the ``depot login`` file; the file is 0600;
the token never appears in output."""

from __future__ import annotations

import io
import json
import re
import stat
from pathlib import Path

import httpx
import pytest

from depot import api
from depot.credentials import (
    Credentials,
    CredentialsError,
    credentials_path,
    normalise_registry,
    read_file,
    resolve,
    save_token,
)
from depot.main import main

FILE_TOKEN = "dpu_fromfile0000000000000000000000"
ENV_TOKEN = "dpu_fromenv00000000000000000000000"
FLAG_TOKEN = "dpu_fromflag0000000000000000000000"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def test_path_honours_xdg_config_home(tmp_path: Path) -> None:
    assert credentials_path({"XDG_CONFIG_HOME": str(tmp_path / "x"), "HOME": "/h"}) == (
        tmp_path / "x" / "depot" / "credentials.json"
    )
    assert credentials_path({"HOME": "/h"}) == Path("/h/.config/depot/credentials.json")
    # A relative XDG_CONFIG_HOME is invalid per the spec and ignored.
    assert credentials_path({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.config/depot/credentials.json"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("registry.example", "https://registry.example"),
        ("https://Registry.Example/", "https://registry.example"),
        ("127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("localhost:5000", "http://localhost:5000"),
        ("[::1]:5000", "http://[::1]:5000"),
        ("http://10.0.0.1:5000", "http://10.0.0.1:5000"),
    ],
)
def test_normalise_registry(text: str, expected: str) -> None:
    assert normalise_registry(text) == expected


@pytest.mark.parametrize("text", ["", "ftp://x", "https://x/some/path", "https://"])
def test_normalise_registry_refuses(text: str) -> None:
    with pytest.raises(CredentialsError):
        normalise_registry(text)


def test_file_is_0600_and_keeps_other_registries(env: dict[str, str]) -> None:
    path = credentials_path(env)
    save_token("https://a.example", "dpu_a", path)
    save_token("https://b.example", FILE_TOKEN, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    document = read_file(path)
    assert document["current"] == "https://b.example"
    assert document["registries"]["https://a.example"] == {"token": "dpu_a"}
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_precedence_flags_then_env_then_file(env: dict[str, str]) -> None:
    save_token("https://file.example", FILE_TOKEN, credentials_path(env))
    assert resolve(None, None, env) == Credentials(
        "https://file.example", FILE_TOKEN, "file", "file"
    )
    env["DEPOT_REGISTRY"] = "env.example"
    env["DEPOT_TOKEN"] = ENV_TOKEN
    assert resolve(None, None, env) == Credentials("https://env.example", ENV_TOKEN, "env", "env")
    creds = resolve("flag.example", FLAG_TOKEN, env)
    assert creds == Credentials("https://flag.example", FLAG_TOKEN, "flag", "flag")
    # Each of the two is resolved on its own.
    assert resolve("flag.example", None, env).token == ENV_TOKEN
    assert resolve(None, FLAG_TOKEN, env).registry == "https://env.example"


def test_file_token_only_for_its_registry(env: dict[str, str]) -> None:
    save_token("https://file.example", FILE_TOKEN, credentials_path(env))
    assert resolve("https://file.example/", None, env).token == FILE_TOKEN
    with pytest.raises(CredentialsError, match=re.escape("no token for https://other.example")):
        resolve("other.example", None, env)


def test_nothing_configured(env: dict[str, str]) -> None:
    with pytest.raises(CredentialsError, match="no registry"):
        resolve(None, None, env)
    with pytest.raises(CredentialsError, match="no token"):
        resolve("r.example", None, env)


def test_corrupt_file(env: dict[str, str]) -> None:
    path = credentials_path(env)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(CredentialsError, match="not valid JSON"):
        resolve(None, None, env)


def test_repr_hides_token() -> None:
    creds = Credentials("https://r.example", FLAG_TOKEN, "flag", "flag")
    assert FLAG_TOKEN not in repr(creds)
    assert FLAG_TOKEN not in str(creds)


def test_error_message_never_holds_the_token() -> None:
    request = httpx.Request("GET", "https://r.example/v2/", headers={"Authorization": "x"})
    response = httpx.Response(
        401,
        request=request,
        content=json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "bad"}]}).encode(),
    )
    message = str(api.error_from(response, "checking"))
    assert "UNAUTHORIZED" in message
    assert "401" in message


def test_cli_errors_do_not_print_the_token(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("DEPOT_REGISTRY", "DEPOT_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out, err = io.StringIO(), io.StringIO()
    # Nothing listens on port 9 of loopback: the request fails before any answer.
    code = main(
        ["usage", "--org", "acme", "--registry", "http://127.0.0.1:9", "--token", FLAG_TOKEN],
        out,
        err,
    )
    assert code == 1
    assert "cannot reach the registry" in err.getvalue()
    assert FLAG_TOKEN not in out.getvalue() + err.getvalue()


def test_login_saves_only_a_verified_token(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.stdin", io.StringIO(FLAG_TOKEN + "\n"))
    out, err = io.StringIO(), io.StringIO()
    assert main(["login", "127.0.0.1:9", "--token-stdin"], out, err) == 1
    assert not credentials_path(env).exists()
    assert FLAG_TOKEN not in out.getvalue() + err.getvalue()
