"""The other edges of the region, as upstreams: one pooled client per peer URL.

A peer is asked exactly as the edge asks origin (the edge service credential, Basic up front:
an edge takes it on ``/v2`` and exchanges it at origin once), plus :data:`PEER_HEADER`, so
the peer does not send the request on to yet another peer.
"""

from __future__ import annotations

import ssl

import httpx

from core.client.credentials import x_token_credentials
from core.client.http import open_http_client
from core.client.registry import RegistryClient
from edge.region.upstream import PEER_HEADER
from edge.upstream import OriginUpstream


class PeerUpstreams:
    def __init__(
        self,
        edge_token: str,
        edge_id: str,
        *,
        max_connections: int = 16,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """``verify``: how a peer's https certificate is checked (the edge's upstream trust)."""
        self._verify = verify
        self._token = edge_token
        self._edge_id = edge_id
        self._max_connections = max_connections
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._upstreams: dict[str, OriginUpstream] = {}

    def __call__(self, url: str) -> OriginUpstream:
        upstream = self._upstreams.get(url)
        if upstream is None:
            http = open_http_client(
                url,
                auth_header=None,
                max_connections=self._max_connections,
                verify=self._verify,
            )
            http.headers[PEER_HEADER] = self._edge_id
            self._clients[url] = http
            client = RegistryClient(http, x_token_credentials(self._token), preemptive_basic=True)
            upstream = self._upstreams[url] = OriginUpstream(client)
        return upstream

    async def aclose(self) -> None:
        for http in self._clients.values():
            await http.aclose()
        self._clients.clear()
        self._upstreams.clear()
