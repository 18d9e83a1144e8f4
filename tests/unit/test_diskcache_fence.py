"""The diskcache internals the edge cache relies on, one test each.

``edge/cache/diskcache_private.py`` reads diskcache's private SQLite schema through
``Cache._sql`` (to evict one least-recently-used entry at a time) and ``edge/cache/disk.py``
subclasses its ``Disk`` (to adopt a finished spool file by rename). Neither is public API: a
failure here names the internal a diskcache release changed. Re-check those two modules and the
diskcache pin in pyproject.toml before relaxing anything here.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import diskcache
import diskcache.core
import pytest

from edge.cache.disk import Adopt, AdoptingDisk
from edge.cache.diskcache_private import TESTED, check_version, lru_victim


def changed(internal: str) -> str:
    return (
        f"diskcache {diskcache.__version__}: {internal} is not what edge/cache relies on "
        "(edge/cache/diskcache_private.py, edge/cache/disk.py)"
    )


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[diskcache.Cache]:
    opened = diskcache.Cache(
        str(tmp_path / "cache"),
        disk=AdoptingDisk,
        eviction_policy="least-recently-used",
        cull_limit=0,
    )
    yield opened
    opened.close()


def test_the_installed_release_is_the_tested_one() -> None:
    check_version(diskcache.__version__)  # what importing edge.cache does
    assert diskcache.__version__.split(".")[:2] == [str(n) for n in TESTED], changed("version")


@pytest.mark.parametrize("version", ["5.7.0", "6.0", "4.1.0", "5", "5.x", ""])
def test_another_release_is_refused_by_name(version: str) -> None:
    with pytest.raises(RuntimeError, match=r"^diskcache .* outside the tested 5\.6\.x"):
        check_version(version)


def test_cache_sql_executes_parameterised_statements(cache: diskcache.Cache) -> None:
    sql = getattr(cache, "_sql", None)
    assert callable(sql), changed("Cache._sql (no longer a callable property)")
    rows = sql("SELECT ? + ?", (2, 3)).fetchall()
    assert rows == [(5,)], changed("Cache._sql (not sqlite3's execute)")


def test_cache_table_has_key_raw_and_access_time(cache: diskcache.Cache) -> None:
    columns = {row[1]: row[2] for row in cache._sql("PRAGMA table_info(Cache)").fetchall()}
    assert columns, changed("the Cache table (gone or renamed)")
    for column, kind in (("key", "BLOB"), ("raw", "INTEGER"), ("access_time", "REAL")):
        assert columns.get(column) == kind, changed(f"the Cache table's {column} column")


def test_a_str_key_is_stored_as_itself_with_raw_1(cache: diskcache.Cache) -> None:
    cache.set("blob:sha256:abc", b"x")
    rows = cache._sql("SELECT key, raw FROM Cache").fetchall()
    assert rows == [("blob:sha256:abc", 1)], changed("Cache.key/raw for str keys")


def test_access_time_orders_entries_least_recently_used_first(
    cache: diskcache.Cache,
) -> None:
    for key in ("a", "b", "c"):
        cache.set(key, key.encode())
    with cache.transact():
        assert lru_victim(cache, keep="c") == "a", changed("Cache.access_time after set")
    assert cache.get("a") == b"a"  # a read makes "a" the most recently used
    with cache.transact():
        assert lru_victim(cache, keep="c") == "b", changed("Cache.access_time after get")
        assert lru_victim(cache, keep="b") == "c", changed("Cache.key/raw in the LRU query")
    cache.delete("b")
    cache.delete("c")
    with cache.transact():
        assert lru_victim(cache, keep="a") is None, changed("the LRU query on one entry")


def test_disk_store_and_filename_keep_their_signatures() -> None:
    store = inspect.signature(diskcache.Disk.store)
    assert list(store.parameters) == ["self", "value", "read", "key"], changed("Disk.store")
    assert store.parameters["key"].default is diskcache.core.UNKNOWN, changed("Disk.store key")
    filename = inspect.signature(diskcache.Disk.filename)
    assert list(filename.parameters) == ["self", "key", "value"], changed("Disk.filename")
    ours = inspect.signature(AdoptingDisk.store)
    assert list(ours.parameters) == list(store.parameters), changed("Disk.store (override)")


def test_disk_store_returns_size_mode_relative_filename_and_no_value(tmp_path: Path) -> None:
    disk = diskcache.Disk(str(tmp_path))
    size, mode, filename, value = disk.store(b"y" * 100_000, False, key="k")
    assert (size, mode, value) == (100_000, diskcache.core.MODE_BINARY, None), changed(
        "Disk.store's (size, mode, filename, value) for a file value"
    )
    assert not os.path.isabs(filename), changed("Disk.store's filename (not relative)")
    assert (tmp_path / filename).read_bytes() == b"y" * 100_000, changed("Disk.store's file")
    relative, full = disk.filename("k", b"")
    assert full == os.path.join(str(tmp_path), relative), changed("Disk.filename's paths")


def test_an_adopted_file_is_read_counted_and_removed_like_diskcache_own(
    cache: diskcache.Cache, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.write_bytes(b"z" * 5000)
    inode = spool.stat().st_ino
    cache.set("blob:x", Adopt(spool, 5000), tag=5000)
    assert not spool.exists(), changed("Cache.set → Disk.store(value, read, key=)")
    file, tag = cache.get("blob:x", read=True, tag=True)
    assert file is not None, changed("Disk.fetch of MODE_BINARY with read=True")
    with file:
        assert os.fstat(file.fileno()).st_ino == inode, changed("Disk.fetch's file path")
        assert file.read() == b"z" * 5000 and tag == 5000
    assert cache.volume() >= 5000, changed("Cache.volume counting a stored file's size")
    (filename,) = [row[0] for row in cache._sql("SELECT filename FROM Cache").fetchall()]
    path = Path(cache.directory) / filename
    assert path.exists()
    assert cache.delete("blob:x")
    assert not path.exists(), changed("Disk.remove of a stored file on delete")
