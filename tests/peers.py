"""Peer programs (skopeo, docker-registry, ...) that interop tests drive.

Locally a missing peer skips the test; on CI (``CI=true``) it fails it, so a CI machine without
the Debian packages cannot turn the interop tier silently green.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_program(name: str) -> str:
    """Return the path of the program ``name`` on ``PATH``, or skip (fail on CI) without it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name!r} is not installed (Debian package needed for interop tests)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path
