"""Redirect mode's URL lifetime is checked at start (SigV4 allows 1 s to 7 days), never by a
500 on each blob GET."""

from __future__ import annotations

import pytest

from config.settings import OriginSettings
from core.errors import ConfigError
from origin.app import _redirect_seconds


def test_off_means_no_redirect_and_on_uses_the_lifetime() -> None:
    assert _redirect_seconds(OriginSettings(storage_redirect_seconds=10**9)) == 0
    assert _redirect_seconds(OriginSettings(storage_redirect=True)) == 300


@pytest.mark.parametrize("seconds", [0, 0.5, 7 * 24 * 3600 + 1])
def test_a_lifetime_s3_cannot_sign_is_refused(seconds: float) -> None:
    with pytest.raises(ConfigError):
        _redirect_seconds(OriginSettings(storage_redirect=True, storage_redirect_seconds=seconds))
