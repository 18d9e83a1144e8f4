"""Which certificates a client trusts when it speaks TLS to an upstream it was given.

``--upstream-ca FILE`` (the edge's ``upstream_ca_file``): only the CA certificates in that PEM
bundle, e.g. a private CA that signed origin's certificate. Without it: the system's trust
store (what ``ssl.create_default_context`` loads), so a certificate from a public CA or one
the operator installed system-wide verifies with no flag. Host names are always checked.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from core.errors import ConfigError


def verifying_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca_file`` or the system store."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot read the CA bundle {ca_file}: no such file") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA bundle {ca_file}: {exc}") from exc
