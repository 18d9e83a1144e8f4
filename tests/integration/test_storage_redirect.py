"""Redirect mode (``storage_redirect = true``) on S3 (moto): a blob GET a client may make is
answered 307 to a presigned URL; the project's registry client (what edges use) follows it
without sending its Authorization to the store, and gets the blob's bytes. Without read
access there is no redirect, only the 401.

moto sits behind a relay of the test's own that records what each request sent, so the test
sees the redirected request exactly as the store received it."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import uuid
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from core.client.credentials import x_token_credentials
from core.client.registry import RegistryClient
from core.digest import parse_digest
from core.reference import parse_repository_name
from tests.integration.oci import Blob, guarded, push_blob_raw, sha256_digest
from tests.integration.tenants import basic
from tests.processes import edge_process, origin_command, origin_process
from tests.s3server import TEST_CREDENTIALS, create_bucket, moto_server, require_moto

pytestmark = pytest.mark.slow


class RecordingRelay:
    """Relays TCP to ``target``; keeps the first bytes each connection sent (its request)."""

    def __init__(self, target: str) -> None:
        self._host, _, port = target.removeprefix("http://").rpartition(":")
        self._port = int(port)
        self.sent: list[bytes] = []
        self.url = ""

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(partial(trio.serve_tcp, self._relay, 0, host="127.0.0.1"))
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"

    async def _relay(self, client: trio.SocketStream) -> None:
        record = bytearray()
        self.sent.append(b"")
        index = len(self.sent) - 1
        async with client, await trio.open_tcp_stream(self._host, self._port) as server:

            async def up() -> None:
                while data := await client.receive_some(65536):
                    if len(record) < 16384:
                        record.extend(data)
                        self.sent[index] = bytes(record)
                    await server.send_all(data)
                await server.send_eof()

            async def down() -> None:
                while data := await server.receive_some(65536):
                    await client.send_all(data)
                nursery.cancel_scope.cancel()

            # A side that resets its connection (a client closing its pool) ends the relay
            # of that connection, never the test.
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(up)
                    nursery.start_soon(down)
            except* (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def cli(data_dir: Path, config: Path, *args: str) -> str:
    command = [*origin_command(), *args, "--data-dir", str(data_dir), "--config", str(config)]
    result = await trio.run_process(
        [*command, "--json"], capture_stdout=True, capture_stderr=True, stdin=subprocess.DEVNULL
    )

    return str(json.loads(result.stdout)["token"])  # what `org create` and `token create` print


async def test_blob_get_redirects_to_the_store_and_the_client_drops_its_credentials(
    tmp_path: Path,
) -> None:
    require_moto()
    blob = Blob(random.Random(3).randbytes(3 * 1024 * 1024 + 5))
    with moto_server(tmp_path / "moto.log") as s3, trio.fail_after(60):
        bucket = f"redirect-{uuid.uuid4().hex[:12]}"
        create_bucket(s3, bucket)
        async with trio.open_nursery() as nursery:
            relay = RecordingRelay(s3.endpoint)
            await relay.start(nursery)
            (tmp_path / "id").write_text(TEST_CREDENTIALS[0])
            (tmp_path / "secret").write_text(TEST_CREDENTIALS[1])
            config = tmp_path / "origin.toml"
            config.write_text(
                f'storage_url = "s3://{bucket}?endpoint={relay.url}&region=us-east-1"\n'
                f'storage_access_key_id_file = "{tmp_path / "id"}"\n'
                f'storage_secret_access_key_file = "{tmp_path / "secret"}"\n'
                "storage_redirect = true\nstorage_redirect_seconds = 120\n"
            )
            data_dir = tmp_path / "data"
            async with origin_process(
                data_dir, tmp_path / "origin.log", ["--config", str(config)]
            ) as origin:
                await cli(data_dir, config, "org", "create", "acme")
                token = await cli(
                    data_dir, config, "token", "create", "--kind", "org", "--org", "acme"
                )
                async with guarded(
                    httpx.AsyncClient(base_url=origin.url, headers=basic(token))
                ) as http:
                    await push_blob_raw(http, "acme/app", blob)
                    answer = await http.get(f"/v2/acme/app/blobs/{blob.digest}")
                    assert answer.status_code == 307, answer.text
                    location = answer.headers["Location"]
                    assert location.startswith(relay.url + "/") and "X-Amz-Signature=" in location
                    head = await http.head(f"/v2/acme/app/blobs/{blob.digest}")
                    assert head.status_code == 200  # HEAD answers itself: no redirect
                    anonymous = await http.get(
                        f"/v2/acme/app/blobs/{blob.digest}", headers={"Authorization": ""}
                    )
                    assert anonymous.status_code == 401

                async with RegistryClient.open(
                    origin.url, x_token_credentials(token), preemptive_basic=True
                ) as client:
                    hasher = hashlib.sha256()
                    async with client.open_blob(
                        parse_repository_name("acme/app"), parse_digest(blob.digest)
                    ) as stream:
                        async for chunk in stream.chunks:
                            hasher.update(chunk)
                    assert f"sha256:{hasher.hexdigest()}" == blob.digest

                # An edge in front fills its cache through the redirect.
                edge_token = await cli(data_dir, config, "token", "create", "--kind", "edge")
                token_file = tmp_path / "edge.token"
                token_file.write_text(edge_token + "\n")
                token_file.chmod(0o600)
                before = len(relay.sent)
                async with (
                    edge_process(
                        origin.url, token_file, tmp_path / "cache", tmp_path / "edge.log"
                    ) as edge,
                    guarded(httpx.AsyncClient(base_url=edge.url, headers=basic(token))) as via_edge,
                ):
                    pulled = await via_edge.get(f"/v2/acme/app/blobs/{blob.digest}")
                    assert pulled.status_code == 200, pulled.text
                    assert sha256_digest(pulled.content) == blob.digest
                assert any(b"X-Amz-Signature=" in r for r in relay.sent[before:])

            presigned = [r for r in relay.sent if b"X-Amz-Signature=" in r.partition(b"\r\n")[0]]
            assert presigned, [r[:120] for r in relay.sent]
            for request in presigned:
                head_lines = request.partition(b"\r\n\r\n")[0].lower()
                assert b"\r\nauthorization:" not in head_lines, head_lines
            nursery.cancel_scope.cancel()
