"""The systemd units (``deploy/systemd``): verified by systemd itself, started with real
flags and settings, hardened. ``tests/integration/test_deploy_start.py`` runs their
ExecStart lines for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import EdgeSettings, OriginSettings
from core.cli import build_parser
from edge import cli as edge_cli
from origin import cli as origin_cli
from tests.deploy_local import (
    SYSTEMD,
    LocalCommand,
    local_unit,
    read_env_file,
    read_unit,
    unit_values,
)
from tests.peers import require_program

UNITS = {"depot-origin.service": "origin", "depot-edge.service": "edge"}
PREFIXES = {"origin": "DEPOT_ORIGIN_", "edge": "DEPOT_EDGE_"}
FIELDS = {"origin": OriginSettings.__dataclass_fields__, "edge": EdgeSettings.__dataclass_fields__}
TOKEN = "dpe_" + "0" * 16 + "X" * 32  # the shape of an edge token; not a real one
INSTALLED = "/opt/depot-registry/bin/depot-registry"


def settings_of(
    command: LocalCommand, monkeypatch: pytest.MonkeyPatch
) -> OriginSettings | EdgeSettings:
    assert command.argv[0] == INSTALLED
    try:
        args = build_parser().parse_args(command.argv[1:])
    except SystemExit:
        pytest.fail(f"depot-registry refuses its arguments: {command.argv}")
    for name in os.environ:
        if name.startswith("DEPOT_"):
            monkeypatch.delenv(name)
    for name, value in command.env.items():
        assert name.startswith(PREFIXES[args.component]), name
        monkeypatch.setenv(name, value)
    loader = origin_cli._settings if args.component == "origin" else edge_cli._settings
    return loader(args)


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_units_pass_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    """systemd's own check: unknown keys, bad values and specifiers, a missing executable
    (the unit's /opt path, pointed at this venv's depot-registry for the check)."""
    analyze = require_program("systemd-analyze")
    installed = Path(sys.executable).with_name("depot-registry")
    text = (SYSTEMD / unit).read_text()
    assert INSTALLED in text
    (tmp_path / unit).write_text(text.replace(INSTALLED, str(installed)))
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_systemd_analyze_verify_can_fail(tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelt key is reported."""
    analyze = require_program("systemd-analyze")
    text = (SYSTEMD / "depot-edge.service").read_text()
    text = text.replace(INSTALLED, str(Path(sys.executable).with_name("depot-registry")))
    (tmp_path / "bad.service").write_text(text.replace("ProtectSystem=", "ProtectSistem="))
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "bad.service")], capture_output=True, text=True
    )
    assert "ProtectSistem" in result.stderr


@pytest.mark.parametrize("unit,role", sorted(UNITS.items()))
def test_exec_start_uses_existing_flags_and_settings(
    unit: str, role: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = local_unit(SYSTEMD / unit, tmp_path, {"edge-token": TOKEN})
    settings = settings_of(command, monkeypatch)
    assert type(settings) is {"origin": OriginSettings, "edge": EdgeSettings}[role]
    service = read_unit(SYSTEMD / unit)["Service"]
    grace = settings.graceful_timeout_seconds
    assert seconds(service["TimeoutStopSec"]) > grace
    if isinstance(settings, OriginSettings):
        # Its data directory is the one systemd creates, owns and leaves writable.
        assert settings.data_dir == command.local("/var/lib/" + service["StateDirectory"])
    else:
        assert settings.cache_dir == command.local("/var/cache/" + service["CacheDirectory"])
        credential = service["LoadCredential"].split(":", 1)[0]
        assert settings.upstream_token_file == command.local("%d") / credential


def test_the_edge_fills_from_the_origin_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = settings_of(local_unit(SYSTEMD / "depot-origin.service", tmp_path, {}), monkeypatch)
    edge = settings_of(
        local_unit(SYSTEMD / "depot-edge.service", tmp_path, {"edge-token": TOKEN}), monkeypatch
    )
    assert isinstance(edge, EdgeSettings)
    assert edge.upstream == f"http://{origin.listen}"
    unit = read_unit(SYSTEMD / "depot-edge.service")
    assert "depot-origin.service" in unit["Unit"]["After"].split()


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_units_are_hardened(unit: str) -> None:
    path = SYSTEMD / unit
    service = read_unit(path)["Service"]
    expected = {
        "User": "depot",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
        "SystemCallArchitectures": "native",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert "@system-service" in unit_values(path, "Service", "SystemCallFilter")
    # ProtectSystem=strict leaves only these writable: the data or cache directory.
    writable = {"/var/lib/" + service.get("StateDirectory", "")}
    writable |= {"/var/cache/" + service.get("CacheDirectory", "")}
    assert set(service["ReadWritePaths"].split()) <= writable


@pytest.mark.parametrize("role", sorted(PREFIXES))
def test_env_examples_name_real_settings(role: str) -> None:
    """Set variables are settings of the right process; so are commented-out assignments
    (removing the # must work). Settings still being built appear only in TODO prose."""
    path = SYSTEMD / f"{role}.env.example"
    for name in read_env_file(path):
        assert name.startswith(PREFIXES[role]), name
        assert name.removeprefix(PREFIXES[role]).lower() in FIELDS[role], name
    for line in path.read_text().splitlines():
        match = re.match(r"#\s*(DEPOT_[A-Z_]+)=", line)
        if match:
            field = match.group(1).removeprefix(PREFIXES[role]).lower()
            assert match.group(1).startswith(PREFIXES[role]) and field in FIELDS[role], line
