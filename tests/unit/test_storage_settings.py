"""Origin settings for blob storage: ``storage_url`` and where S3 credentials come from
(credential files, else the standard AWS variables through the loader; never printed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import ConfigError, load
from config.settings import OriginSettings
from core.cli import build_parser
from origin import cli
from origin.storage import storage_credentials


def test_storage_url_from_the_environment_and_aws_variables_from_theirs() -> None:
    settings = load(
        OriginSettings,
        environ={
            "DEPOT_ORIGIN_STORAGE_URL": "s3://bucket?endpoint=http://127.0.0.1:9000",
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "very-secret-value",
        },
        prefix="DEPOT_ORIGIN_",
    )
    assert settings.storage_url == "s3://bucket?endpoint=http://127.0.0.1:9000"
    credentials = storage_credentials(settings)
    assert credentials is not None
    assert (credentials.access_key_id, credentials.secret_access_key) == (
        "AKIDEXAMPLE",
        "very-secret-value",
    )
    assert credentials.session_token is None
    assert "very-secret-value" not in repr(settings)
    assert "very-secret-value" not in repr(credentials)


def test_aws_variables_cannot_come_from_the_file_or_a_depot_variable(tmp_path: Path) -> None:
    file = tmp_path / "origin.toml"
    file.write_text('aws_secret_access_key = "leaked"\n')
    with pytest.raises(ConfigError, match=r"AWS_SECRET_ACCESS_KEY") as caught:
        load(OriginSettings, file=file, prefix="DEPOT_ORIGIN_")
    assert "leaked" not in str(caught.value)
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID"):
        load(
            OriginSettings,
            environ={"DEPOT_ORIGIN_AWS_ACCESS_KEY_ID": "x"},
            prefix="DEPOT_ORIGIN_",
        )


def test_credential_files_win_over_the_environment(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("file-key\n")
    (tmp_path / "secret").write_text("file-secret\n")
    settings = OriginSettings(
        storage_access_key_id_file=tmp_path / "key",
        storage_secret_access_key_file=tmp_path / "secret",
        aws_access_key_id="env-key",
        aws_secret_access_key="env-secret",
    )
    credentials = storage_credentials(settings)
    assert credentials is not None
    assert (credentials.access_key_id, credentials.secret_access_key) == (
        "file-key",
        "file-secret",
    )
    assert storage_credentials(OriginSettings()) is None  # botocore's own chain then


def test_half_given_or_unreadable_credentials_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k")
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "secret").write_text("s3cr3t-value")
    with pytest.raises(ConfigError, match="go together"):
        storage_credentials(OriginSettings(storage_access_key_id_file=tmp_path / "key"))
    with pytest.raises(ConfigError, match="go together"):
        storage_credentials(OriginSettings(aws_access_key_id="only-the-id"))
    with pytest.raises(ConfigError, match="one non-empty line"):
        storage_credentials(
            OriginSettings(
                storage_access_key_id_file=tmp_path / "empty",
                storage_secret_access_key_file=tmp_path / "secret",
            )
        )
    with pytest.raises(ConfigError, match="cannot read") as caught:
        storage_credentials(
            OriginSettings(
                storage_access_key_id_file=tmp_path / "key",
                storage_secret_access_key_file=tmp_path / "missing",
            )
        )
    assert "s3cr3t-value" not in str(caught.value)


def test_origin_serve_takes_a_storage_url_flag() -> None:
    args = build_parser([cli.register]).parse_args(
        ["origin", "serve", "--storage-url", "s3://bucket?region=eu-west-1"]
    )
    assert cli._settings(args).storage_url == "s3://bucket?region=eu-west-1"
    default = build_parser([cli.register]).parse_args(["origin", "serve"])
    assert cli._settings(default).storage_url == ""
