"""Origin and edge over TLS with a throwaway CA: HTTP/1.1 and HTTP/2 clients verify the
certificate, blob bodies (streamed, never sendfile, on TLS) arrive whole, the edge verifies
origin against ``upstream_ca_file`` and refuses it without, and a bad TLS setting is refused
at start."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from config.settings import OriginSettings
from core.client.trust import verifying_context
from core.errors import ConfigError
from core.web.serving import bind_socket
from core.web.tls import server_tls_context
from origin.server import serve
from tests.integration.conftest import start_origin
from tests.integration.edges import start_edge
from tests.integration.oci import new_image, push_blob, push_manifest, random_blob
from tests.integration.tenants import Tenants, basic, bearer_for, start_tenants
from tests.tls_ca import TlsFiles, make_tls_files

TIMEOUT = 30


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
async def tenants(nursery: trio.Nursery, tmp_path: Path, tls: TlsFiles) -> AsyncIterator[Tenants]:
    running = await start_tenants(
        nursery, tmp_path / "origin", tls_cert_file=tls.cert, tls_key_file=tls.key
    )
    yield running
    running.origin.shutdown.set()
    running.store.close()


def client(
    url: str, trust: ssl.SSLContext | bool, *, http2: bool = False, **headers: str
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        trust_env=False,
        timeout=TIMEOUT,
        verify=trust,
        http1=not http2,
        http2=http2,
        headers={"Accept-Encoding": "identity", **headers},
    )


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
async def test_origin_serves_https_verified_by_the_ca(
    tenants: Tenants, tls: TlsFiles, http2: bool
) -> None:
    assert tenants.url.startswith("https://127.0.0.1:")
    trust = verifying_context(tls.ca_cert)
    manifest = new_image(layers=1)
    big = random_blob(3 * 1024 * 1024 + 17)  # several file-body chunks
    with trio.fail_after(TIMEOUT):
        async with client(tenants.url, trust, http2=http2, **basic(tenants.acme)) as http:
            await push_manifest(http, "acme/app", manifest, "v1")
            await push_blob(http, "acme/app", big)
            got = await http.get(f"/v2/acme/app/blobs/{big.digest}")
            assert got.status_code == 200, got.text
            assert got.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert got.content == big.data
            ranged = await http.get(
                f"/v2/acme/app/blobs/{big.digest}", headers={"Range": "bytes=1048570-2097160"}
            )
            assert ranged.status_code == 206
            assert ranged.content == big.data[1048570:2097161]
            tag = await http.get("/v2/acme/app/manifests/v1")
            assert tag.status_code == 200 and tag.content == manifest.payload


async def test_origin_certificate_is_refused_without_the_ca(tenants: Tenants) -> None:
    with trio.fail_after(TIMEOUT):
        # The system trust store does not know the throwaway CA.
        async with client(tenants.url, verifying_context(None)) as http:
            with pytest.raises(httpx.ConnectError) as refused:
                await http.get("/v2/")
    assert any(isinstance(e, ssl.SSLCertVerificationError) for e in causes(refused.value))


def causes(exc: BaseException | None) -> list[BaseException]:
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


async def test_plain_http_on_the_tls_port_fails_and_the_server_keeps_serving(
    tenants: Tenants, tls: TlsFiles
) -> None:
    plain = tenants.url.replace("https://", "http://")
    with trio.fail_after(TIMEOUT):
        async with client(plain, False) as http:
            with pytest.raises(httpx.TransportError):
                await http.get("/v2/")
        async with client(tenants.url, verifying_context(tls.ca_cert)) as http:
            assert (await http.get("/v2/")).status_code == 401


async def test_edge_over_tls_verifies_origin_against_the_upstream_ca(
    nursery: trio.Nursery, tenants: Tenants, tls: TlsFiles, tmp_path: Path
) -> None:
    trust = verifying_context(tls.ca_cert)
    manifest = new_image(layers=2)
    with trio.fail_after(TIMEOUT):
        async with client(tenants.url, trust, **basic(tenants.acme)) as origin:
            await push_manifest(origin, "acme/app", manifest, "v1")
        edge = await start_edge(
            nursery,
            tenants,
            tmp_path / "edge",
            upstream_ca_file=tls.ca_cert,
            tls_cert_file=tls.cert,
            tls_key_file=tls.key,
        )
        assert edge.url.startswith("https://")
        async with client(edge.url, trust, http2=True) as http:
            assert (await http.get("/readyz")).status_code == 200
            http.headers.update(
                await bearer_for(http, tenants.acme_pull, "repository:acme/app:pull")
            )
            got = await http.get("/v2/acme/app/manifests/v1")
            assert got.status_code == 200, got.text
            for blob in manifest.blobs:
                for _ in range(2):  # the fill, then the cache hit
                    fetched = await http.get(f"/v2/acme/app/blobs/{blob.digest}")
                    assert fetched.status_code == 200
                    assert fetched.content == blob.data
        await edge.stop()


async def test_edge_refuses_an_origin_its_trust_store_does_not_know(
    nursery: trio.Nursery, tenants: Tenants, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        edge = await start_edge(nursery, tenants, tmp_path / "edge")  # system trust store
        async with client(edge.url, False) as http:
            assert (await http.get("/readyz")).status_code == 503
            token = await http.get(
                "/token",
                params={"service": "depot-registry", "scope": "repository:acme/app:pull"},
                headers=basic(tenants.acme_pull),
            )
            assert token.status_code == 503, token.text
        await edge.stop()


def test_tls_settings_are_checked_at_start(tls: TlsFiles, tmp_path: Path) -> None:
    assert server_tls_context(None, None) is None
    assert server_tls_context(tls.cert, tls.key) is not None
    with pytest.raises(ConfigError, match="both"):
        server_tls_context(tls.cert, None)
    with pytest.raises(ConfigError, match="no such file"):
        server_tls_context(tmp_path / "missing.crt", tls.key)
    with pytest.raises(ConfigError, match="cannot load"):
        server_tls_context(tls.key, tls.cert)  # swapped
    with pytest.raises(ConfigError, match="no such file"):
        verifying_context(tmp_path / "missing-ca.crt")


async def test_origin_serve_refuses_half_a_tls_setting(tmp_path: Path, tls: TlsFiles) -> None:
    settings = OriginSettings(data_dir=tmp_path / "data", tls_cert_file=tls.cert)
    sock = bind_socket("127.0.0.1:0")
    with sock, pytest.raises(ConfigError, match="both"):
        await serve(settings, sock)


async def test_a_trusted_tls_terminating_proxy_sets_the_scheme_of_the_challenge(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Behind a load balancer that terminates TLS, the realm clients are sent to must be
    https; only a trusted proxy's X-Forwarded-Proto is believed."""
    behind = await start_origin(nursery, tmp_path / "behind", trusted_proxies="127.0.0.1")
    exposed = await start_origin(nursery, tmp_path / "exposed")
    with trio.fail_after(TIMEOUT):
        for origin, scheme in ((behind, "https"), (exposed, "http")):
            async with client(origin.url, False, **{"X-Forwarded-Proto": "https"}) as http:
                answer = await http.get("/v2/", headers={"Host": "registry.example"})
                assert answer.status_code == 401
                challenge = answer.headers["WWW-Authenticate"]
                assert f'realm="{scheme}://registry.example/token"' in challenge, challenge
        behind.shutdown.set()
        exposed.shutdown.set()


async def test_depot_saves_and_lists_builds_over_tls_with_its_ca_file(
    tenants: Tenants, tls: TlsFiles, tmp_path: Path
) -> None:
    """``DEPOT_CA_FILE`` makes the depot CLI trust a private CA; without it, it refuses."""
    from depot.image_source import DOCKER_ARCHIVE
    from tests.integration.test_depot_cli import Depot, make_source

    home = tmp_path / "home"
    home.mkdir()
    path, _, _ = make_source(DOCKER_ARCHIVE, tmp_path)
    untrusting = Depot(home, tenants.url, tenants.acme)
    refused = await untrusting.run("builds", "list", "--project", tenants.project, check=False)
    assert refused.returncode != 0
    assert b"certificate is not trusted" in refused.stderr, refused.stderr
    assert b"DEPOT_CA_FILE" in refused.stderr
    depot = Depot(home, tenants.url, tenants.acme, {"DEPOT_CA_FILE": str(tls.ca_cert)})
    saved = await depot.run("save", path, "--project", tenants.project, "--save-tag", "main")
    build = saved.stdout.decode().strip()
    listed = (await depot.run("builds", "list", "--project", tenants.project)).stdout.decode()
    assert build in listed and "main" in listed, listed


@pytest.mark.parametrize("kind", ["origin", "edge"])
def test_serve_refuses_bad_tls_flags_before_binding(
    kind: str, tls: TlsFiles, tmp_path: Path
) -> None:
    import subprocess

    from tests.processes import origin_command

    token = tmp_path / "edge.token"
    token.write_text("dpe_x\n")
    common = ["--listen", "127.0.0.1:0", "--tls-cert", str(tls.cert)]  # no --tls-key
    extra = (
        ["--data-dir", str(tmp_path / "data")]
        if kind == "origin"
        else ["--upstream", "https://origin.example", "--upstream-token-file", str(token)]
    )
    done = subprocess.run(
        [*origin_command(), kind, "serve", *common, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done
    assert "--tls-cert and --tls-key" in done.stderr, done.stderr
