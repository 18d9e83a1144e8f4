"""One fill per digest per host: an advisory lock per digest shared by an edge's processes.

Every worker process of ``edge serve --workers N`` (and any edge sharing the cache directory)
takes ``<cache_dir>/locks/<digest-hex>.lock`` with ``flock`` before it fills a blob from
upstream. The holder fills as usual and commits into the cache (one diskcache, safe across
processes); a process that finds the lock held waits for it and then looks in the cache
again, so it serves the leader's copy instead of fetching a second one. The kernel drops a
dead process's ``flock``, so a waiter whose leader was killed gets the lock, finds no blob,
and fills itself: nothing to expire, nothing to clean up after a crash.

Waiting polls ``LOCK_NB`` (a non-blocking syscall, fine on the event loop) instead of a
blocking ``flock`` in a thread: a cancelled waiter must not leave a thread that takes the
lock later and holds it for nobody.

Lock files are removed by their holder before it unlocks, so ``locks/`` does not grow with
every digest ever filled. A waiter may then lock a file that is no longer the one at the
path: after locking, it checks the path still names the descriptor's file (same inode), and
starts over when not. The holder writes its pid into the file (for operators and tests).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from core.digest import Digest

#: How often a waiter tries the lock again.
POLL_SECONDS = 0.05


class HostLocks:
    def __init__(self, cache_dir: Path) -> None:
        self.directory = cache_dir / "locks"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.waits = 0  # fills that found another process filling the same digest

    def path(self, digest: Digest) -> Path:
        return self.directory / f"{digest.algorithm}-{digest.encoded}.lock"

    @asynccontextmanager
    async def hold(self, digest: Digest) -> AsyncIterator[bool]:
        """Hold ``digest``'s lock; yields whether another process held it first (then the
        caller should look in the cache again before filling)."""
        path = self.path(digest)
        waited = False
        while True:
            fd = await trio.to_thread.run_sync(_try_lock, path)
            if fd is not None:
                break
            if not waited:
                waited = True
                self.waits += 1
            await trio.sleep(POLL_SECONDS)
        try:
            yield waited
        finally:
            _unlock(path, fd)


def _try_lock(path: Path) -> int | None:
    """The locked descriptor of ``path``, or None while another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current != os.fstat(fd).st_ino:
            os.close(fd)  # the holder removed it after we opened it: lock the new one
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd


def _unlock(path: Path, fd: int) -> None:
    """Remove the file while still holding it (see the module docstring), then unlock."""
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)
