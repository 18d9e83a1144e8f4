"""Pure parts of saved builds: ids, project repositories, TTLs, platforms, months and cost."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InputError
from core.reference import is_tag
from origin.builds.records import (
    DEFAULT_BUILD_TTL_SECONDS,
    BuildRecord,
    effective_ttl,
    is_build_id,
    is_project_repository,
    month_of,
    new_build_id,
    platform_string,
    split_by_month,
    storage_cost,
)
from origin.builds.service import MAX_SAVE_TAGS, check_save_tags


def _t(year: int, month: int, day: int, hour: int = 0) -> float:
    return datetime(year, month, day, hour, tzinfo=UTC).timestamp()


def test_build_ids_are_short_unique_tags() -> None:
    ids = {new_build_id() for _ in range(2000)}
    assert len(ids) == 2000
    for build_id in ids:
        assert len(build_id) == 12 and build_id.isalnum() and build_id == build_id.lower()
        assert is_build_id(build_id) and is_tag(build_id)


@pytest.mark.parametrize("text", ["", "abc", "ABCDEFGHIJKL", "abcdefghijk-", "abcdefghijklm"])
def test_not_build_ids(text: str) -> None:
    assert not is_build_id(text)


def test_project_repositories() -> None:
    assert is_project_repository("acme/a1b2c3d4e5f6")
    assert is_project_repository("my-org/000000000000")
    assert not is_project_repository("acme/web")
    assert not is_project_repository("acme/a1b2c3d4e5f6/sub")
    assert not is_project_repository("a1b2c3d4e5f6")
    assert not is_project_repository("acme/A1B2C3D4E5F6")


def test_ttl_project_over_org_over_default() -> None:
    assert effective_ttl(DEFAULT_BUILD_TTL_SECONDS, None, None) == 7 * 86400
    assert effective_ttl(100, 50, None) == 50
    assert effective_ttl(100, 50, 10) == 10
    assert effective_ttl(100, None, 10) == 10


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ({"os": "linux", "architecture": "amd64"}, "linux/amd64"),
        ({"os": "linux", "architecture": "arm64", "variant": "v8"}, "linux/arm64/v8"),
        ({"os": "linux", "architecture": "arm", "variant": ""}, "linux/arm"),
        ({"os": "unknown", "architecture": "unknown"}, None),  # buildx attestations
        ({"os": "linux"}, None),
        ({"os": 1, "architecture": "amd64"}, None),
        ("linux/amd64", None),
        (None, None),
    ],
)
def test_platform_strings(platform: object, expected: str | None) -> None:
    assert platform_string(platform) == expected


def test_months_split_at_utc_boundaries() -> None:
    start, end = _t(2030, 1, 31, 23), _t(2030, 2, 1, 2)
    assert split_by_month(start, end) == [("2030-01", 3600.0), ("2030-02", 7200.0)]
    december = split_by_month(_t(2030, 12, 31, 12), _t(2031, 1, 1, 12))
    assert december == [("2030-12", 43200.0), ("2031-01", 43200.0)]
    assert split_by_month(end, end) == []
    assert split_by_month(end, start) == []
    assert month_of(_t(2030, 3, 17, 5)) == "2030-03"


@given(
    st.floats(min_value=1.6e9, max_value=2.5e9),
    st.floats(min_value=0, max_value=400 * 86400),
)
def test_month_pieces_cover_the_interval(start: float, length: float) -> None:
    pieces = split_by_month(start, start + length)
    assert sum(seconds for _, seconds in pieces) == pytest.approx(length, abs=1e-3)
    months = [month for month, _ in pieces]
    assert months == sorted(set(months))
    assert all(seconds > 0 for _, seconds in pieces)


def test_storage_cost() -> None:
    # One GB kept for a 730-hour month at $0.20 per GB-month.
    assert storage_cost(1e9 * 730, 0.20) == pytest.approx(0.20)
    assert storage_cost(0, 0.20) == 0
    assert storage_cost(2.5e9 * 73, 0.20) == pytest.approx(0.05)


def test_save_tags() -> None:
    assert check_save_tags(["main", "v1.2.3", "pr_42"]) == ("main", "v1.2.3", "pr_42")
    assert check_save_tags([]) == ()
    with pytest.raises(InputError, match="invalid"):
        check_save_tags(["no/slash"])
    with pytest.raises(InputError, match="build id"):
        check_save_tags(["abcdefabcdef"])
    with pytest.raises(InputError, match="repeat"):
        check_save_tags(["a", "a"])
    with pytest.raises(InputError, match="at most"):
        check_save_tags([f"t{i}" for i in range(MAX_SAVE_TAGS + 1)])


def test_build_states() -> None:
    build = BuildRecord("abcdefabcdef", "p" * 12, "acme", "acme/" + "p" * 12, 100.0, 200.0, ())
    assert build.live(150) and build.state(150) == "pending"
    assert not build.live(200) and build.state(200) == "expired"
    bound = dataclasses.replace(build, digest="sha256:" + "0" * 64)
    assert bound.state(150) == "ready"
    deleted = dataclasses.replace(build, deleted_at=120.0)
    assert not deleted.live(110) and deleted.state(110) == "deleted"
