"""TLS for the servers: the context origin and edge serve with (``--tls-cert``/``--tls-key``).

The context follows what anycorn builds for itself (TLS 1.2 at least, compression off) and
offers ALPN ``h2`` then ``http/1.1``: anycorn's trio worker speaks HTTP/2 to a client that
chooses it. On TLS the zero-copy extension is not offered (the bytes must be encrypted in
userspace), so file bodies are streamed (core/web/file_body.py) on both protocols.

A certificate or key that cannot be loaded is a :class:`~core.errors.ConfigError` raised at
start, before the socket is bound, never a failure on the first handshake.
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

from core.errors import ConfigError

#: Offered in this order; a client that knows neither gets HTTP/1.1.
ALPN_PROTOCOLS = ("h2", "http/1.1")
#: A client that does not finish its handshake in this long is disconnected (a connection
#: that never says anything must not hold a slot for the whole idle timeout).
HANDSHAKE_TIMEOUT_SECONDS = 10.0


def server_tls_context(cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext | None:
    """The context to serve with, or None (plain HTTP) when neither file is given.

    ``cert_file`` holds the certificate chain (leaf first, then intermediates), PEM;
    ``key_file`` its private key, PEM, unencrypted.
    """
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        raise ConfigError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot read TLS file {exc.filename}: no such file") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate {cert_file} with key {key_file}: {exc}"
        ) from exc
    return context


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """``--tls-cert FILE --tls-key FILE`` on a serve command (the same on origin and edge)."""
    parser.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key",
    )
    parser.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="the certificate's private key (PEM)"
    )
