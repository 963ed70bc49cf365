"""Whole-object copies ("views") of cached objects for FUSE passthrough, bounded in bytes.

FUSE passthrough lets the kernel read an open file from one backing file with no request to
the filesystem and ext4's own page cache (large folios): local-disk speed. An object in the
cache is many block files, so the mount assembles a view of a version it has served whole:
each block's bytes checked against the block's digest as they are copied, written to a temp
file, renamed into place. Views cost disk (and page cache) on top of the store, up to
`fuse_view_bytes`; the least recently opened go first. A view is named by its version's key,
so a changed object never reads an old view.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

from meshcache.core.digest import digest as compute_digest
from meshcache.core.digest import to_hex
from meshcache.core.version import ObjectVersion
from meshcache.read.reader import Reader, ReaderBackend

log = logging.getLogger("meshcache.surfaces.fuseviews")

_TMP = ".tmp"


def views_dir(cache_dir: str) -> str:
    """Where a cache directory's views live."""
    return os.path.join(cache_dir, "fuse-views")


def _views(root: str) -> list[tuple[float, int, str]]:
    """(mtime, size, name) of each finished view under `root`."""
    out = []
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return out
    for name in names:
        if name.endswith(_TMP):
            continue
        try:
            st = os.stat(os.path.join(root, name))
        except FileNotFoundError:
            continue
        out.append((st.st_mtime, st.st_size, name))
    return out


def view_bytes(cache_dir: str) -> int:
    """Bytes the views of `cache_dir` take."""
    return sum(size for _, size, _ in _views(views_dir(cache_dir)))


def remove_views(cache_dir: str, versions: list[ObjectVersion] | None = None,
                 keep: Sequence[ObjectVersion] = ()) -> int:
    """Remove the views of `versions` (None: every view but those of `keep`); returns the bytes
    freed. Files open on a mount keep reading a removed view until they are closed."""
    root = views_dir(cache_dir)
    names = None if versions is None else {to_hex(v.key) for v in versions}
    kept = {to_hex(v.key) for v in keep}
    freed = 0
    for _, size, name in _views(root):
        if (names is None or name in names) and name not in kept:
            try:
                os.unlink(os.path.join(root, name))
                freed += size
            except FileNotFoundError:
                pass
    return freed


class Views:
    """The views under `root` (a directory of the cache), at most `budget` bytes in all."""

    def __init__(self, root: str, budget: int, *, fsync: bool) -> None:
        self.root = root
        self.budget = budget
        self.fsync = fsync
        self._building: set[bytes] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="meshcache-fuse-view")
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):
            if name.endswith(_TMP) and not _alive(name):  # a build a crash interrupted
                try:
                    os.unlink(os.path.join(root, name))
                except FileNotFoundError:
                    pass

    def _path(self, version: ObjectVersion) -> str:
        return os.path.join(self.root, to_hex(version.key))

    def find(self, version: ObjectVersion) -> str | None:
        """The view of `version`, marked as just used; None when there is none."""
        path = self._path(version)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def request(self, node: ReaderBackend, version: ObjectVersion,
                options: Mapping[str, Any] | None) -> None:
        """Build the view of `version` in the background (once; nothing when it would not fit)."""
        if version.size > self.budget or os.path.exists(self._path(version)):
            return
        with self._lock:
            if version.key in self._building:
                return
            self._building.add(version.key)
        self._pool.submit(self._build_logged, node, version, dict(options or {}))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _build_logged(self, node: ReaderBackend, version: ObjectVersion,
                      options: dict[str, Any]) -> None:
        try:
            self.build(node, version, options)
        except Exception as e:  # a view is an optimisation: the mount serves without one
            log.warning("no passthrough view of %s: %s", version.url, e)
        finally:
            with self._lock:
                self._building.discard(version.key)

    def build(self, node: ReaderBackend, version: ObjectVersion,
              options: Mapping[str, Any] | None = None) -> str | None:
        """Assemble the view of `version` from the cache now; its path, or None when the
        object changed meanwhile."""
        path = self._path(version)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}{_TMP}"
        self._make_room(version.size)
        reader = Reader(node, version.url, options)
        try:
            if reader.version != version:
                return None
            bs = reader.block_size
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
            try:
                self._copy(node, reader, bs, out)
                if self.fsync:
                    os.fsync(out)
            finally:
                os.close(out)
            os.rename(tmp, path)
            log.info("passthrough view of %s: %d bytes", version.url, version.size)
            return path
        finally:
            reader.close()
            if os.path.exists(tmp):
                os.unlink(tmp)

    @staticmethod
    def _copy(node: ReaderBackend, reader: Reader, bs: int, out: int) -> None:
        """Copy the object block by block: bytes from a block file are checked against that
        block's digest (the file may have changed on disk since it was verified); bytes the
        reader holds in memory were verified when they arrived."""
        while reader.tell() < reader.size:
            spans = reader.lease(bs)
            if spans is None:
                data = reader.read(bs)
                if not data:
                    raise OSError("object ended early")
                _write_all(out, data)
                continue
            store = node.store
            try:
                for d, fd, off, n in spans:
                    data = os.pread(fd, n, off)
                    if off == 0 and compute_digest(data) != d:
                        raise OSError(f"block {to_hex(d)} does not match its digest")
                    _write_all(out, data)
            finally:
                for d, fd, _, _ in spans:
                    store.close_block(d, fd)

    def _make_room(self, need: int) -> None:
        """Remove the least recently used views until `need` more bytes fit the budget."""
        views = _views(self.root)
        used = sum(size for _, size, _ in views)
        for _, size, name in sorted(views):
            if used + need <= self.budget:
                break
            try:
                os.unlink(os.path.join(self.root, name))
            except FileNotFoundError:
                pass
            used -= size


def _alive(tmp_name: str) -> bool:
    """Whether the process building temp file `tmp_name` (<key>.<pid>.<thread>.tmp) runs."""
    try:
        pid = int(tmp_name.split(".")[1])
        os.kill(pid, 0)
    except (IndexError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
