"""Cross-process single flight: processes sharing a cache directory fetch a cold block once.

One lock file per block, `locks/<version key hex>.<index>`, held with flock(2). The process that
takes the lock fetches; the others poll it with their descriptor kept open (never a blocked
thread: a process whose executor threads all waited on locks held by a process waiting on it
would deadlock). When the fetcher has stored the block it writes the digest into the lock file
and lets go: whoever takes the lock next reads the digest and uses the stored block. The kernel
drops a killed fetcher's flock, so a SIGKILL mid-fetch hands the block to the next waiter (the
file holds no digest). Finished lock files are swept after SWEEP_AFTER seconds, by when the
manifests on disk name the digests; a swept file is unlinked while its lock is held.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from meshcache.core.digest import DIGEST_SIZE

_POLL_FIRST, _POLL_MAX = 0.005, 0.05  # seconds between tries for a held lock
SWEEP_AFTER = 60.0  # seconds a finished lock file is kept (manifests are flushed each second)
STALE_AFTER = 600.0  # seconds an abandoned lock file (its fetcher died) is kept


class Held:
    """A block lock this process holds: `digest` is what a finished fetcher left (if any);
    call `done(digest)` once the block is stored so waiters take it from the store."""

    def __init__(self, fd: int, path: str, digest: bytes | None) -> None:
        self._fd, self._path, self.digest = fd, path, digest
        self._finished = False

    def done(self, digest: bytes) -> None:
        """Leave the digest for whoever takes the lock next (before it is unlocked)."""
        if self._finished:
            return
        self._finished = True
        try:
            os.pwrite(self._fd, digest, 0)
        except OSError:
            pass


class BlockLocks:
    """Per-block lock files under `root` (made on first use)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._swept = 0.0

    def path(self, key: bytes, index: int) -> str:
        return str(self.root / f"{key.hex()}.{index}")

    @asynccontextmanager
    async def hold(self, key: bytes, index: int) -> AsyncIterator[Held | None]:
        """Hold block (key, index) across processes; yields None when locks cannot be used
        here (read-only directory): the caller then fetches alone, as before."""
        path = self.path(key, index)
        now = time.time()
        if now - self._swept > SWEEP_AFTER:
            self._swept = now
            await asyncio.to_thread(self.sweep, now)
        fd = await self._acquire(path)
        if fd is None:
            yield None
            return
        try:
            data = os.pread(fd, DIGEST_SIZE, 0)
            yield Held(fd, path, data if len(data) == DIGEST_SIZE else None)
        finally:
            os.close(fd)  # closing drops the flock

    async def _acquire(self, path: str) -> int | None:
        delay = _POLL_FIRST
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o664)
            except FileNotFoundError:
                try:
                    self.root.mkdir(parents=True, exist_ok=True)
                except OSError:
                    return None
                continue
            except OSError:
                return None
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        os.close(fd)
                        return None
                    await asyncio.sleep(delay)
                    delay = min(_POLL_MAX, delay * 2)
            # Locked. A digest in it: a fetcher finished (even if the file was swept since).
            # No digest and swept: a stale inode, take the file now at the path.
            if os.pread(fd, DIGEST_SIZE, 0) or _same_file(fd, path):
                return fd
            os.close(fd)

    def sweep(self, now: float) -> int:
        """Unlink finished lock files older than SWEEP_AFTER and abandoned ones older than
        STALE_AFTER, each while holding its lock; returns how many."""
        removed = 0
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return 0
        for entry in entries:
            try:
                st = entry.stat()
            except OSError:
                continue
            age = now - st.st_mtime
            if age < (SWEEP_AFTER if st.st_size >= DIGEST_SIZE else STALE_AFTER):
                continue
            try:
                fd = os.open(entry.path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, entry.path):
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass
            finally:
                os.close(fd)
        return removed


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    fst = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)
