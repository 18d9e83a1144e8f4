from pathlib import Path

import pytest

from config.loader import ConfigError, load
from config.settings import EdgeSettings, OriginSettings
from config.units import parse_duration, parse_size


def test_units() -> None:
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("4MB") == 4_000_000
    assert parse_size(10) == 10
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("1.5h") == 5400
    for bad in ["", "12 parsecs", "MiB"]:
        with pytest.raises(ValueError):
            parse_size(bad)


def test_precedence_file_env_overrides(tmp_path: Path) -> None:
    file = tmp_path / "origin.toml"
    file.write_text('listen = "0.0.0.0:1"\nmax_manifest_bytes = "1MiB"\nworkers = 3\n')
    settings = load(
        OriginSettings,
        file=file,
        environ={"DEPOT_ORIGIN_WORKERS": "2", "OTHER": "x", "DEPOT_ORIGIN_DATA_DIR": "/srv"},
        prefix="DEPOT_ORIGIN_",
        overrides={"workers": None, "listen": "127.0.0.1:9"},
    )
    assert settings.listen == "127.0.0.1:9"  # explicit flag wins
    assert settings.workers == 2  # environment beats the file
    assert settings.max_manifest_bytes == 1 << 20
    assert settings.data_dir == Path("/srv")
    assert settings.resolved_database_url == "sqlite:////srv/registry.db"


def test_unknown_and_invalid_keys_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown settings: nope"):
        load(OriginSettings, environ={"DEPOT_ORIGIN_NOPE": "1"}, prefix="DEPOT_ORIGIN_")
    with pytest.raises(ConfigError, match="workers"):
        load(OriginSettings, environ={"DEPOT_ORIGIN_WORKERS": "many"}, prefix="DEPOT_ORIGIN_")
    bad = tmp_path / "bad.toml"
    bad.write_text("listen = ")
    with pytest.raises(ConfigError):
        load(OriginSettings, file=bad, prefix="DEPOT_ORIGIN_")


@pytest.mark.parametrize(
    ("cls", "prefix"), [(OriginSettings, "DEPOT_ORIGIN_"), (EdgeSettings, "DEPOT_EDGE_")]
)
def test_serving_timeouts_default_and_load(
    tmp_path: Path, cls: type[OriginSettings] | type[EdgeSettings], prefix: str
) -> None:
    defaults = load(cls, prefix=prefix)
    assert defaults.body_idle_timeout_seconds == 60
    assert defaults.send_idle_timeout_seconds == 60
    file = tmp_path / "serving.toml"
    file.write_text('body_idle_timeout_seconds = "2m"\n')
    settings = load(
        cls, file=file, environ={f"{prefix}SEND_IDLE_TIMEOUT_SECONDS": "1.5"}, prefix=prefix
    )
    assert settings.body_idle_timeout_seconds == 120
    assert settings.send_idle_timeout_seconds == 1.5


def test_tls_settings_from_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('tls_cert_file = "/etc/depot/edge.crt"\nupstream_ca_file = "/etc/ca.crt"\n')
    edge = load(
        EdgeSettings,
        file=config,
        environ={"DEPOT_EDGE_TLS_KEY_FILE": "/etc/depot/edge.key"},
        prefix="DEPOT_EDGE_",
    )
    assert edge.tls_cert_file == Path("/etc/depot/edge.crt")
    assert edge.tls_key_file == Path("/etc/depot/edge.key")
    assert edge.upstream_ca_file == Path("/etc/ca.crt")
    origin = load(
        OriginSettings,
        environ={"DEPOT_ORIGIN_TLS_CERT_FILE": "/c.pem", "DEPOT_ORIGIN_TLS_KEY_FILE": "/k.pem"},
        prefix="DEPOT_ORIGIN_",
    )
    assert (origin.tls_cert_file, origin.tls_key_file) == (Path("/c.pem"), Path("/k.pem"))
    assert OriginSettings().tls_cert_file is None and EdgeSettings().upstream_ca_file is None
