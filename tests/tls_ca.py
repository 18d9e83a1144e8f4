"""A throwaway certificate authority (trustme) and a server certificate it signed, as files.

Shared by the TLS integration tests and the interop tests that make Docker, containerd,
podman and skopeo verify a registry's certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

#: A name that is not loopback-looking, resolved to 127.0.0.1 by an /etc/hosts entry in the
#: interop tests (peers resolve through the system resolver). ``.test`` is reserved (RFC 2606).
REGISTRY_NAME = "registry.test"


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # the CA certificate clients trust (PEM)
    cert: Path  # the server's chain (PEM)
    key: Path  # the server's private key (PEM)


def make_tls_files(directory: Path, *names: str) -> TlsFiles:
    """A new CA and a server certificate for ``names`` (default: registry.test, localhost
    and 127.0.0.1), written under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*(names or (REGISTRY_NAME, "localhost", "127.0.0.1")))
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca_cert))
    server.private_key_pem.write_to_path(str(files.key))
    server.cert_chain_pems[0].write_to_path(str(files.cert))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(files.cert), append=True)
    return files
