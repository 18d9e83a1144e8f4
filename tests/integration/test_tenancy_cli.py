"""``depot-registry org|project|user|token`` as a real process, on a data directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import trio

from origin.auth.store import TenancyStore
from origin.auth.token_format import parse_token
from origin.metadata.database import Database
from tests.processes import free_port, origin_command

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SECONDS = 60


def cli(*args: str | Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    # No DEPOT_* from the caller's environment: the data dir alone decides the database.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEPOT_")}
    return subprocess.run(
        [*origin_command(), *map(str, args), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        cwd=_PROJECT_ROOT,
        env=environ,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )


def ok(*args: str | Path, data_dir: Path) -> str:
    result = cli(*args, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def ok_json(*args: str | Path, data_dir: Path) -> Any:
    return json.loads(ok(*args, "--json", data_dir=data_dir))


def refused(*args: str | Path, data_dir: Path) -> str:
    result = cli(*args, data_dir=data_dir)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr


async def authenticate(data_dir: Path, token: str) -> Any:
    database = Database.open(f"sqlite:///{(data_dir / 'registry.db').resolve()}")
    try:
        with trio.fail_after(20):
            return await TenancyStore(database).authenticate(token, 4e9)
    finally:
        database.close()


async def test_org_project_and_token_lifecycle(tmp_path: Path) -> None:
    data = tmp_path / "data"  # created by the first command, asked to
    assert "no registry in" in refused("org", "create", "acme", data_dir=data)
    assert "no registry in" in refused("token", "list", data_dir=data)
    assert not data.exists()  # refusing made nothing
    created = ok_json("org", "create", "acme", "--init", data_dir=data)
    assert set(created) == {"org_id", "name", "token"}
    assert created["name"] == "acme"
    assert re.fullmatch(r"org[a-z0-9]{16}", created["org_id"])  # a DNS label: a subdomain
    assert parse_token(created["token"]) is not None
    assert created["token"].startswith("dpo_")
    org_principal = await authenticate(data, created["token"])
    assert org_principal.kind == "org" and org_principal.orgs == {"acme"}

    human = ok("org", "create", "other", data_dir=data)
    (other_token,) = re.findall(r"dpo_\w+", human)
    assert "created organization other" in human
    assert "already exists" in refused("org", "create", "acme", data_dir=data)
    assert "invalid organization name" in refused("org", "create", "Not_A_Slug", data_dir=data)

    project_id = ok("project", "create", "--org", "acme", "web", data_dir=data).strip()
    assert re.fullmatch(r"[a-z0-9]{12}", project_id)
    listed = ok_json("project", "list", "--org", "acme", data_dir=data)
    assert listed == [{"project_id": project_id, "name": "web", "repository": f"acme/{project_id}"}]
    assert "no organization 'nope'" in refused(
        "project", "create", "--org", "nope", "web", data_dir=data
    )

    pull = ok_json(
        "token", "create", "--kind", "pull", "--project", project_id, "--expires", "30d",
        "--description", "ci pulls", data_dir=data,
    )  # fmt: skip
    assert set(pull) == {"token_id", "kind", "token", "expires_at"}
    assert pull["kind"] == "pull" and pull["token"].startswith("dpr_" + pull["token_id"])
    assert isinstance(pull["expires_at"], float)
    pull_principal = await authenticate(data, pull["token"])  # at 4e9: long expired
    assert pull_principal is None

    project_token = ok_json(
        "token", "create", "--kind", "project", "--project", project_id, data_dir=data
    )
    assert project_token["expires_at"] is None
    principal = await authenticate(data, project_token["token"])
    assert principal.project == project_id and principal.orgs == {"acme"}

    ok("user", "create", "alice", "--org", "acme", "--org", "other", data_dir=data)
    user_token = ok_json("token", "create", "--kind", "user", "--user", "alice", data_dir=data)
    assert (await authenticate(data, user_token["token"])).orgs == {"acme", "other"}
    edge_token = ok_json("token", "create", "--kind", "edge", data_dir=data)
    assert (await authenticate(data, edge_token["token"])).kind == "edge"

    secrets = [created["token"], other_token, pull["token"], project_token["token"]]
    secrets += [user_token["token"], edge_token["token"]]
    bare_secrets = [token[20:] for token in secrets]

    tokens = ok_json("token", "list", "--org", "acme", data_dir=data)
    assert [t["kind"] for t in tokens] == ["org", "pull", "project"]
    assert tokens[1]["description"] == "ci pulls"
    assert tokens[1]["project_id"] == project_id
    assert {t["org_id"] for t in tokens} == {created["org_id"]}
    orgless = ok_json("token", "list", data_dir=data)
    assert [t["kind"] for t in orgless] == ["user", "edge"]
    listings = [
        json.dumps(tokens),
        json.dumps(orgless),
        ok("token", "list", "--org", "acme", data_dir=data),
        ok("token", "list", "--org", "acme", "--all", "--json", data_dir=data),
        ok("token", "list", data_dir=data),
    ]
    for listing in listings:
        for secret in bare_secrets:
            assert secret not in listing

    revoked_id = tokens[2]["token_id"]
    assert revoked_id in ok("token", "revoke", revoked_id, data_dir=data)
    assert await authenticate(data, project_token["token"]) is None
    assert "no unrevoked token" in refused("token", "revoke", revoked_id, data_dir=data)
    active = ok_json("token", "list", "--org", "acme", data_dir=data)
    assert revoked_id not in {t["token_id"] for t in active}
    everything = ok_json("token", "list", "--org", "acme", "--all", data_dir=data)
    (revoked,) = [t for t in everything if t["token_id"] == revoked_id]
    assert revoked["revoked_at"] is not None

    # Revoking by the leaked token itself works, and the secret is not echoed back.
    out = ok("token", "revoke", user_token["token"], data_dir=data)
    assert user_token["token_id"] in out and user_token["token"] not in out
    assert await authenticate(data, user_token["token"]) is None


REFUSALS = [
    (["token", "create", "--kind", "org"], "is attached to an org"),
    (["token", "create", "--kind", "org", "--org", "nope"], "no organization 'nope'"),
    (["token", "create", "--kind", "user", "--user", "bob"], "no user 'bob'"),
    (["token", "create", "--kind", "pull", "--project", "nonexistent0"], "no project"),
    (["token", "create", "--kind", "pull", "--org", "acme", "--expires", "soon"], "duration"),
    (["token", "create", "--kind", "pull", "--org", "acme", "--expires", "0s"], "positive"),
    (["token", "list", "--org", "nope"], "no organization 'nope'"),
    (["token", "revoke", "nonexistent"], "no unrevoked token"),
]


def test_refusals_are_one_line_and_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok("org", "create", "acme", "--init", data_dir=data)
    for args, message in REFUSALS:
        stderr = refused(*args, data_dir=data)
        assert stderr.startswith("depot-registry: ")
        assert message in stderr
    assert [t["kind"] for t in ok_json("token", "list", "--org", "acme", data_dir=data)] == ["org"]


def test_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "origin.toml"
    config.write_text('no_such_setting = "x"\n')
    stderr = refused("org", "list", "--config", config, data_dir=tmp_path / "data")
    assert "unknown settings" in stderr


def test_a_failing_database_exits_1(tmp_path: Path) -> None:
    # Nothing listens on the port: the database is unreachable, not the command wrong.
    config = tmp_path / "origin.toml"
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    config.write_text(f'database_url = "{dead}"\n')
    result = cli("org", "list", "--config", config, data_dir=tmp_path / "data")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("depot-registry: ")
    # A URL that names no usable database is the caller's to fix.
    config.write_text('database_url = "mysql://x@localhost/db"\n')
    assert "unsupported database" in refused("org", "list", "--config", config, data_dir=tmp_path)


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = cli("token", "create", "--kind", "root", data_dir=tmp_path / "data")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_trust_relationships_create_list_delete(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok("org", "create", "acme", "--init", data_dir=data)
    issuer = "https://token.actions.githubusercontent.com"
    created = ok_json(
        "trust", "create", "--org", "acme", "--issuer", issuer, "--audience", "depot-registry",
        "--condition", "repository=acme/app", "--condition", "ref=refs/heads/main",
        "--action", "pull", "--action", "push", "--description", "gha main", data_dir=data,
    )  # fmt: skip
    assert created["issuer"] == issuer and created["audience"] == "depot-registry"
    assert created["conditions"] == {"repository": "acme/app", "ref": "refs/heads/main"}
    assert created["actions"] == ["pull", "push"] and created["project_id"] is None
    assert created["id"].startswith("trust_")
    listed = ok_json("trust", "list", "--org", "acme", data_dir=data)
    assert [t["id"] for t in listed] == [created["id"]]
    line = ok("trust", "list", "--org", "acme", data_dir=data)
    assert created["id"] in line and "repository=acme/app" in line and "pull,push" in line

    for args, message in (
        (["--issuer", "http://issuer.example", "--condition", "a=b"], "https"),
        (["--issuer", issuer, "--condition", "no-equals-sign"], "CLAIM=VALUE"),
    ):
        stderr = refused(
            "trust", "create", "--org", "acme", "--audience", "x", "--action", "pull", *args,
            data_dir=data,
        )  # fmt: skip
        assert message in stderr, stderr
    assert "no trust relationship" in refused(
        "trust", "delete", "--org", "acme", "trust_nope", data_dir=data
    )
    ok("trust", "delete", "--org", "acme", created["id"], data_dir=data)
    assert ok_json("trust", "list", "--org", "acme", data_dir=data) == []
    deleted = ok_json("trust", "list", "--org", "acme", "--all", data_dir=data)
    assert deleted[0]["revoked_at"] is not None


def test_token_list_names_users_orgs_and_projects(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok("org", "create", "acme", "--init", data_dir=data)
    ok("user", "create", "alice", "--org", "acme", data_dir=data)
    made = ok_json("token", "create", "--kind", "user", "--user", "alice", data_dir=data)
    lines = ok("token", "list", data_dir=data).splitlines()
    line = next(x for x in lines if x.startswith(made["token_id"]))
    assert "\tuser alice\t" in line, line
    assert "user_" not in line  # the name, not the id
    listed = ok_json("token", "list", data_dir=data)
    assert [t["user"] for t in listed if t["token_id"] == made["token_id"]] == ["alice"]
    org_line = ok("token", "list", "--org", "acme", data_dir=data)
    assert "\torg acme\t" in org_line, org_line
