"""Tenants at the edge on cache HITS: a cached blob is served only to a caller who may pull
a repository that contains it, never by digest alone.
"""

from __future__ import annotations

import httpx
import trio

from tests.integration.edges import EdgeFactory, edge_client, upstream_gets
from tests.integration.edges import edges_fixture as edges_fixture
from tests.integration.edges import proxy_fixture as proxy_fixture
from tests.integration.edges import tenants_fixture as tenants_fixture
from tests.integration.oci import (
    assert_error,
    config_blob,
    image_manifest,
    new_image,
    push_manifest,
    random_blob,
)
from tests.integration.origin_proxy import OriginProxy
from tests.integration.tenants import Tenants, basic, bearer_for

TIMEOUT = 30
RANGES = (None, "bytes=0-99", "bytes=-10")


async def refused_everywhere(
    http: httpx.AsyncClient,
    path: str,
    headers: dict[str, str],
    status: int,
    code: str,
    secret: bytes,
) -> None:
    """GET and HEAD of ``path``, whole and ranged: always ``status``/``code``, no byte of
    ``secret`` (the blob) in any answer."""
    for method in ("GET", "HEAD"):
        for byte_range in RANGES:
            sent = dict(headers)
            if byte_range is not None:
                sent["Range"] = byte_range
            response = await http.request(method, path, headers=sent)
            assert_error(response, status, code)
            assert "Content-Range" not in response.headers, (method, path, byte_range)
            assert secret[:32] not in response.content and secret[-10:] not in response.content


async def test_cache_hits_respect_tenants(
    tenants: Tenants, proxy: OriginProxy, edges: EdgeFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await edges()
        secret = image_manifest(config_blob(), [random_blob(300_000)])
        layer = secret.blobs[-1]
        async with (
            edge_client(tenants.url, basic(tenants.acme)) as acme_origin,
            edge_client(tenants.url, basic(tenants.other)) as other_origin,
        ):
            await push_manifest(acme_origin, "acme/app", secret, "v1")
            await push_manifest(acme_origin, "acme/lib", new_image(), "v1")  # not the layer
            await push_manifest(other_origin, "other/app", new_image(), "v1")

        async with edge_client(edge.url) as http:
            # acme pulls through the edge: the manifest and the layer are cached.
            acme = await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            assert (await http.get("/v2/acme/app/manifests/v1", headers=acme)).status_code == 200
            got = await http.get(f"/v2/acme/app/blobs/{layer.digest}", headers=acme)
            assert got.status_code == 200 and got.content == layer.data
            fills = proxy.count("GET", "blob")
            assert upstream_gets(proxy, layer.digest) == 1

            other_on_acme = await bearer_for(http, tenants.other, "repository:acme/app:pull")
            other_on_other = await bearer_for(http, tenants.other, "repository:other/app:pull")
            acme_lib = await bearer_for(http, tenants.acme_pull, "repository:acme/lib:pull")
            acme_none = await bearer_for(http, tenants.acme_pull, "repository:acme/none:pull")
            blob_path = f"/v2/{{}}/blobs/{layer.digest}"
            cases: list[tuple[str, dict[str, str], int, str]] = [
                # other's token, Bearer from the edge's /token and Basic x-token
                ("acme/app", other_on_acme, 401, "UNAUTHORIZED"),
                ("acme/app", basic(tenants.other), 403, "DENIED"),
                ("other/app", other_on_other, 404, "BLOB_UNKNOWN"),
                ("other/app", basic(tenants.other), 404, "BLOB_UNKNOWN"),
                # nobody
                ("acme/app", {}, 401, "UNAUTHORIZED"),
                ("other/app", {}, 401, "UNAUTHORIZED"),
                # acme's own pull token, for repositories without the digest
                ("acme/lib", acme_lib, 404, "BLOB_UNKNOWN"),
                ("acme/lib", basic(tenants.acme_pull), 404, "BLOB_UNKNOWN"),
                ("acme/none", acme_none, 404, "BLOB_UNKNOWN"),
            ]
            for repository, headers, status, code in cases:
                path = blob_path.format(repository)
                await refused_everywhere(http, path, headers, status, code, layer.data)

            # The manifest by digest, likewise.
            for repository, headers, status, code in [
                ("acme/app", other_on_acme, 401, "UNAUTHORIZED"),
                ("other/app", other_on_other, 404, "MANIFEST_UNKNOWN"),
                ("acme/lib", acme_lib, 404, "MANIFEST_UNKNOWN"),
            ]:
                path = f"/v2/{repository}/manifests/{secret.digest}"
                for method in ("GET", "HEAD"):
                    response = await http.request(method, path, headers=headers)
                    assert_error(response, status, code)
                    assert secret.payload not in response.content

            # Nothing was filled for the refused requests; acme still gets its hit.
            assert proxy.count("GET", "blob") == fills
            got = await http.get(f"/v2/acme/app/blobs/{layer.digest}", headers=acme)
            assert got.status_code == 200 and got.content == layer.data
            assert upstream_gets(proxy, layer.digest) == 1
