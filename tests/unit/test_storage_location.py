"""The ``storage_url`` setting's parser (pure): which driver, bucket, prefix, endpoint, region."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import ConfigError
from core.storage.location import FileLocation, S3Credentials, S3Location, parse_storage_url


def test_empty_and_file_urls_pick_the_filesystem() -> None:
    assert parse_storage_url("") == FileLocation(None)
    assert parse_storage_url("  ") == FileLocation(None)
    assert parse_storage_url("file:///srv/registry") == FileLocation(Path("/srv/registry"))
    assert parse_storage_url("file://data/blobs") == FileLocation(Path("data/blobs"))
    assert parse_storage_url("FILE:///x") == FileLocation(Path("/x"))


def test_s3_with_an_endpoint_is_path_style() -> None:
    location = parse_storage_url("s3://my-bucket?endpoint=http://127.0.0.1:9000&region=eu-west-1")
    assert location == S3Location(
        bucket="my-bucket", prefix="", endpoint="http://127.0.0.1:9000", region="eu-west-1"
    )
    assert isinstance(location, S3Location) and location.path_style


def test_s3_on_aws_is_virtual_hosted_with_a_default_region_and_a_prefix() -> None:
    location = parse_storage_url("s3://registry.example/depot/prod/")
    assert location == S3Location(bucket="registry.example", prefix="depot/prod/")
    assert location.region == "us-east-1"
    assert not location.path_style
    ipv6 = parse_storage_url("s3://b-1?endpoint=https://[::1]:8443")
    assert isinstance(ipv6, S3Location) and ipv6.endpoint == "https://[::1]:8443"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("/srv/registry", "not a URL"),
        ("ftp://host/x", "unsupported scheme"),
        ("file://", "needs a directory"),
        ("file:///x?y=1", "no query"),
        ("s3://", "bucket name"),
        ("s3://UPPER", "bucket name"),
        ("s3://ab", "bucket name"),
        ("s3://a..b", "bucket name"),
        ("s3://-bucket", "bucket name"),
        ("s3://key:secret@bucket", "credentials do not belong"),
        ("s3://bucket?endpoint=127.0.0.1:9000", "http"),
        ("s3://bucket?endpoint=http://h:99999", "endpoint"),
        ("s3://bucket?endpoint=http://h/path", "HOST"),
        ("s3://bucket?region=Bad Region", "region"),
        ("s3://bucket?regoin=us-east-1", "unknown parameter 'regoin'"),
        ("s3://bucket?region=a&region=b", "given twice"),
        ("s3://bucket/a/../b", "prefix"),
        ("s3://bucket#frag", "fragment"),
    ],
)
def test_unusable_urls_are_config_errors(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        parse_storage_url(url)


@given(st.text(max_size=60))
def test_any_text_parses_or_is_a_config_error(text: str) -> None:
    try:
        parse_storage_url(text)
    except ConfigError:
        pass


def test_credentials_never_show_their_secret() -> None:
    credentials = S3Credentials("AKIDEXAMPLE", "very-secret-value", "session-token-value")
    assert "AKIDEXAMPLE" in repr(credentials)
    assert "very-secret-value" not in repr(credentials)
    assert "session-token-value" not in repr(credentials)
