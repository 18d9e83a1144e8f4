"""``depot-registry gc`` as a real process on a data directory."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import trio

from config.settings import OriginSettings
from core.digest import parse_digest
from core.reference import parse_manifest_reference, parse_repository_name
from origin.registry.paths import blob_path
from origin.registry.registry import Registry
from origin.server import open_registry
from tests.integration.oci import Blob, Manifest, new_image, random_blob
from tests.processes import origin_command

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SECONDS = 60


async def gc(*args: str, data_dir: Path) -> subprocess.CompletedProcess[bytes]:
    # No DEPOT_* from the caller's environment: the data dir alone decides the database.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEPOT_")}
    with trio.fail_after(TIMEOUT_SECONDS):
        return await trio.run_process(
            [*origin_command(), "gc", *args, "--data-dir", str(data_dir)],
            capture_stdout=True,
            capture_stderr=True,
            cwd=_PROJECT_ROOT,
            env=environ,
            check=False,
        )


async def gc_json(*args: str, data_dir: Path) -> Any:
    result = await gc(*args, "--json", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    return json.loads(result.stdout)


async def store_blob(registry: Registry, repo: str, blob: Blob) -> None:
    staged = f"uploads/{os.urandom(16).hex()}/data"
    await registry.storage.put(staged, blob.data)
    name = parse_repository_name(repo)
    await registry.blobs.commit(name, staged, parse_digest(blob.digest), blob.size)


async def store_image(registry: Registry, repo: str, image: Manifest, tag: str) -> None:
    for blob in image.blobs:
        await store_blob(registry, repo, blob)
    name, reference = parse_repository_name(repo), parse_manifest_reference(tag)
    await registry.manifests.put(name, reference, image.payload, image.media_type)


def on_disk(data_dir: Path, digest: str) -> bool:
    return (data_dir / "storage" / blob_path(parse_digest(digest))).is_file()


async def test_dry_run_then_collection(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    kept, dropped, orphan = new_image(), new_image(), random_blob(777)
    with trio.fail_after(TIMEOUT_SECONDS):
        async with open_registry(OriginSettings(data_dir=data_dir)) as registry:
            await store_image(registry, "lib/app", kept, "v1")
            await store_image(registry, "lib/app", dropped, dropped.digest)  # untagged
            await store_blob(registry, "lib/app", orphan)
    dropped_blobs = {(blob.digest, blob.size) for blob in [*dropped.blobs, orphan]}
    freed = sum(size for _, size in dropped_blobs)

    # The default grace period (2 h) keeps all of it: everything was pushed just now.
    result = await gc(data_dir=data_dir)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert "0 manifests, 0 links, 0 blobs; freed 0 bytes" in result.stdout.decode()

    result = await gc("--dry-run", "--grace", "0", data_dir=data_dir)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    text = result.stdout.decode()
    assert f"would delete manifest lib/app@{dropped.digest}" in text
    assert f"would delete blob {orphan.digest} ({orphan.size} bytes)" in text
    assert f"would free {freed} bytes" in text
    assert text.rstrip().endswith("dry run: nothing was deleted")

    report = await gc_json("--dry-run", "--grace", "0", data_dir=data_dir)
    assert report["dry_run"] is True
    assert report["manifests"] == [{"repository": "lib/app", "digest": dropped.digest}]
    assert {(b["digest"], b["size"]) for b in report["blobs"]} == dropped_blobs
    assert report["bytes_freed"] == freed
    assert all(on_disk(data_dir, digest) for digest, _ in dropped_blobs)

    report = await gc_json("--grace", "0s", data_dir=data_dir)
    assert report["dry_run"] is False
    assert (report["manifests_deleted"], report["blobs_deleted"]) == (1, len(dropped_blobs))
    assert report["links_removed"] == len(dropped_blobs)
    assert report["bytes_freed"] == freed
    assert not any(on_disk(data_dir, digest) for digest, _ in dropped_blobs)
    assert all(on_disk(data_dir, blob.digest) for blob in kept.blobs)

    report = await gc_json("--grace", "0", data_dir=data_dir)
    assert report["bytes_freed"] == 0 and report["manifests"] == []


async def test_refusals(tmp_path: Path) -> None:
    result = await gc(data_dir=tmp_path / "missing")
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr.decode().startswith("depot-registry: no registry in")
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "missing").exists()

    result = await gc("--grace", "soon", data_dir=tmp_path)
    assert result.returncode == 2 and b"not a duration" in result.stderr
