"""core/storage/filesystem_io.py starts writeback as an object is received (so the fsync
before commit has little left), and never fails a write for it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from core.storage import filesystem_io as fsio


def test_each_write_starts_writeback_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int, int, int]] = []

    def spy(fd: int, offset: int, count: int, flags: int) -> None:
        calls.append((fd, offset, count, flags))
        # By the time writeback is asked for, the bytes are in the kernel (flushed).
        assert os.fstat(fd).st_size == 3 * 1024

    monkeypatch.setattr(fsio, "_SYNC_FILE_RANGE", spy)
    monkeypatch.setattr(fsio, "WRITEBACK_STEP", 2048)
    with open(tmp_path / "object", "wb") as f:
        fsio.write_parts(f, b"a" * 1024)
        assert calls == []  # not a step yet
        fsio.write_parts(f, bytearray(b"b" * 2048))  # past 2048: once
        assert calls == [(f.fileno(), 0, 0, fsio.SYNC_FILE_RANGE_WRITE)]
    assert (tmp_path / "object").read_bytes() == b"a" * 1024 + b"b" * 2048


def test_a_filesystem_that_cannot_still_gets_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(fd: int, offset: int, count: int, flags: int) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(fsio, "_SYNC_FILE_RANGE", refuse)
    monkeypatch.setattr(fsio, "WRITEBACK_STEP", 4)
    with open(tmp_path / "object", "wb") as f:
        fsio.write_parts(f, b"x" * 10)
    assert (tmp_path / "object").read_bytes() == b"x" * 10


@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="sync_file_range is a Linux call (elsewhere writeback is off); CI runs on Linux",
)
def test_the_real_call_is_found_and_works_here(tmp_path: Path) -> None:
    assert fsio._SYNC_FILE_RANGE is not None
    with open(tmp_path / "object", "wb") as f:
        fsio.write_parts(f, os.urandom(1 << 20))
        fsio._SYNC_FILE_RANGE(f.fileno(), 0, 0, fsio.SYNC_FILE_RANGE_WRITE)
        with pytest.raises(OSError):
            fsio._SYNC_FILE_RANGE(f.fileno(), 0, 0, 1 << 20)  # an unknown flag: EINVAL
    assert (tmp_path / "object").stat().st_size == 1 << 20
