"""Spool files: where a fill writes a blob while readers tail it, before the cache adopts it.

Spools live in the edge's ``spool/`` directory, beside (never inside) the cache directory and on
the same filesystem, so adopting one is a rename. A live fill holds ``flock(LOCK_EX)`` on its
spool: :func:`remove_stale_spools` deletes only unlocked ones (left by a killed process).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from pathlib import Path


def lock_spool(fd: int) -> bool:
    """Take the spool lock a live fill holds; False when another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


class SpoolFile:
    """A fill's spool file: a locked write descriptor and the read descriptor readers dup.

    The lock tells :func:`remove_stale_spools` the file is live. Every method blocks; call
    them in a worker thread.
    """

    def __init__(self, path: Path, write_fd: int, read_fd: int) -> None:
        self.path, self.write_fd, self.read_fd = path, write_fd, read_fd

    @classmethod
    def create(cls, path: Path) -> SpoolFile:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            # A cleaner that opened the file before we locked it may have deleted it.
            if not lock_spool(fd) or os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise OSError(f"spool file {path} was removed while being created")
            return cls(path, fd, os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except BaseException:
            os.close(fd)
            raise

    def write(self, pieces: list[bytes], hasher: hashlib._Hash) -> int:
        for piece in pieces:
            hasher.update(piece)  # releases the GIL on buffers over 2 KiB
        total = sum(map(len, pieces))
        written = os.writev(self.write_fd, pieces)
        if written < total:  # a short write: finish it piece by piece
            rest = memoryview(b"".join(pieces))[written:]
            while rest:
                rest = rest[os.write(self.write_fd, rest) :]
        return total

    def sync(self) -> None:
        os.fsync(self.write_fd)

    def finish(self, adopted: bool) -> None:
        """Delete the file unless the cache adopted it; drop the lock."""
        try:
            if not adopted:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self.write_fd)


def remove_stale_spools(spool_dir: Path) -> int:
    """Delete spool files no live fill holds locked; return how many."""
    removed = 0
    for path in spool_dir.iterdir():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, IsADirectoryError):
            continue
        try:
            if lock_spool(fd):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        finally:
            os.close(fd)
    return removed
