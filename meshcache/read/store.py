"""On-disk block store: blocks named by digest, written to a temp file, fsynced, then renamed.

Layout under the cache directory:
    blocks/ab/<digest hex>      one file per block; only complete, fsynced blocks get these names
    manifests/ab/<key hex>      one CBOR manifest per object version
    pins/<key hex>              an object version that eviction must keep
    tmp/<pid>.<id>/             blocks being written by one process; removed once it is gone
    index                       snapshot of the index (digest, size), written at close and now
                                and then; checked against a listing of blocks/ at start
The index (digest -> size) is rebuilt at start from the snapshot and a listing of blocks/ (a
stat only of files the snapshot lacks), or by a stat of every block file without one. A block
file is hashed the first time this process opens it, and again whenever its size, mtime or
inode change, so a truncated or tampered file is detected, deleted and re-fetched, not served.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
import ctypes
import fcntl
import itertools
import resource
import stat
from array import array
from pathlib import Path
from typing import Iterator

import numpy

from meshcache.core import indexsnap
from meshcache.core.digest import DIGEST_SIZE
from meshcache.core.digest import digest as compute_digest
from meshcache.core.digest import is_hex_digest, to_hex
from meshcache.core.eviction import S3FIFO
from meshcache.core.manifest import Manifest, ManifestError

log = logging.getLogger("meshcache.read.store")


class StoreError(OSError):
    """The cache directory cannot be used (not writable, full, ...); the message names the path."""


class BlockCorrupt(Exception):
    """A block file on disk does not hash to its name; it has been removed."""


def raise_fd_limit() -> int:
    """Raise the process's soft descriptor limit toward the hard one (at most 65536); returns
    the soft limit now. The node and the daemon call it once at start: a store keeps block
    descriptors open, and the usual soft limit of 1024 is small for it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return 65536 if soft == resource.RLIM_INFINITY else soft


def _fd_budget() -> int:
    """How many block descriptors to keep open: a quarter of the soft fd limit, at most 4096."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = 65536 if soft == resource.RLIM_INFINITY else soft
    return max(16, min(4096, limit // 4))


class BlockStore:
    """Thread-safe store of verified blocks with S3-FIFO eviction, pins and read leases."""

    def __init__(self, root: str | os.PathLike[str], capacity: int, *, fsync: bool = True) -> None:
        self.root = Path(root).expanduser()
        self._blocks_dir = str(self.root / "blocks")
        self._snapshot_file = str(self.root / "index")
        self.capacity = capacity
        self.fsync = fsync
        self._lock = threading.Lock()
        self._verified: dict[bytes, tuple[int, int, int]] = {}  # digest -> (ino, size, mtime)
        self._fds: dict[bytes, int] = {}  # digest -> open read-only fd, oldest first
        self._max_fds = _fd_budget()
        self._leases: dict[bytes, int] = {}
        self._pinned_versions: set[bytes] = set()
        self._pinned_digests: dict[bytes, int] = {}
        self._policy = S3FIFO(capacity)  # also the index: which blocks are here, and their sizes
        self.corrupt_blocks = 0
        self.evicted_blocks = 0
        self._open()

    def after_fork(self) -> None:
        """In a forked child: the parent's lock may have been held by another thread."""
        self._lock = threading.Lock()

    # ---- start -------------------------------------------------------------------------------

    def _open(self) -> None:
        for sub in ("blocks", "manifests", "pins", "tmp"):
            try:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(e.errno, f"cache directory {self.root} is not usable: "
                                 f"{e.strerror}", str(self.root / sub)) from None
        probe = self.root / "tmp" / f"{os.getpid()}.probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink(missing_ok=True)
        except OSError as e:
            raise StoreError(e.errno, f"cache directory {self.root} is not writable: {e.strerror}",
                             str(self.root)) from None
        self._clear_dead_tmp()
        self._tmp_pid = -1
        self._changes = 0  # blocks added or removed since the last snapshot
        # How the index was rebuilt ("snapshot" or "scan") and how many block files it stat'ed.
        self.index_source, self.index_stats = "scan", 0
        snapshot = self._load_snapshot()
        if snapshot is None:
            self._scan_all()
        else:
            self._reconcile(*snapshot)
        for pin in (self.root / "pins").iterdir():
            if is_hex_digest(pin.name):
                self._pin_version_locked(bytes.fromhex(pin.name))
        self._evict_locked()
        _release_free_heap()

    def _load_snapshot(self) -> tuple[list[bytes], array] | None:
        """The index snapshot's (digests, sizes), or None when absent or not whole (torn,
        truncated, tampered): then the index is rebuilt by a full scan."""
        try:
            with open(self._snapshot_file, "rb") as f:
                data = f.read()
        except OSError:
            return None
        try:
            return indexsnap.decode(data)
        except indexsnap.SnapshotError as e:
            log.warning("index snapshot %s not used (%s): scanning every block",
                        self._snapshot_file, e)
            return None

    def _scan_all(self) -> None:
        """The index from a stat of every block file (no snapshot): sizes and ages from the disk.
        Digests are kept, the rest in flat arrays (no object per file outlives the scan)."""
        digests: list[bytes] = []
        mtimes, sizes = array("q"), array("q")
        for sub, names, ds in self._block_dirs():
            self.index_stats += len(names)
            for name, d in zip(names, ds):
                st = self._stat_block(sub, name)
                if st is not None:
                    digests.append(d)
                    mtimes.append(st.st_mtime_ns)
                    sizes.append(st.st_size)
        order = array("q", numpy.frombuffer(mtimes, numpy.int64).argsort(kind="stable").tobytes())
        del mtimes  # the order stays an array: its ints are made one at a time as it is read
        self._policy.load([digests[i] for i in order], array("q", (sizes[i] for i in order)))
        self._changes = 1  # no snapshot (or a bad one): write one at the next chance

    def _reconcile(self, digests: list[bytes], sizes: array) -> None:
        """The index from a snapshot checked against a listing of blocks/ (names only, no stat):
        entries whose file is gone are dropped, files the snapshot lacks are stat'ed and added,
        newest last. Sizes of the rest are the snapshot's: a block file never changes under its
        name, and its bytes are hashed before they are served anyway. So a stale snapshot (a
        crash, another process writing since) is still a right start, only a slower one."""
        self.index_source = "snapshot"
        policy = self._policy
        policy.load(digests, sizes)
        del digests, sizes
        listed = bytearray()  # every digest on disk, 32 bytes each (no object per file)
        new: list[tuple[int, int, bytes]] = []
        found = dropped = 0
        for sub, _, ds in self._block_dirs():
            listed += b"".join(ds)
            unknown = policy.missing(ds)
            found += len(ds) - len(unknown)
            self.index_stats += len(unknown)
            for d in unknown:
                st = self._stat_block(sub, d.hex())
                if st is not None:
                    new.append((st.st_mtime_ns, st.st_size, d))
        if found != len(policy):  # some snapshot entries have no file any more
            on_disk = {bytes(listed[i:i + DIGEST_SIZE])
                       for i in range(0, len(listed), DIGEST_SIZE)}
            for d in policy.missing_from(on_disk):
                policy.remove(d)
                dropped += 1
            del on_disk
        del listed
        new.sort()
        policy.load([d for _, _, d in new], [size for _, size, _ in new])
        self._changes = dropped + len(new)

    def _block_dirs(self) -> Iterator[tuple[str, list[str], list[bytes]]]:
        """(subdirectory path, names, digests) of the files under each blocks/xx/ named like a
        block and placed where the name says. Names only (listdir: no object per file beyond
        its name); parsed a directory at a time."""
        for sub in os.scandir(self._blocks_dir):
            if not sub.is_dir(follow_symlinks=False):
                continue
            prefix = sub.name
            names = [n for n in os.listdir(sub.path) if len(n) == 2 * DIGEST_SIZE
                     and n[:2] == prefix]
            joined = "".join(names)
            try:  # the whole directory in one parse: lower-case hex, 32 bytes a name
                raw = bytes.fromhex(joined)
                ok = len(raw) == DIGEST_SIZE * len(names) and joined.islower()
            except ValueError:
                ok = False
            if ok:
                ds = [raw[i:i + DIGEST_SIZE] for i in range(0, len(raw), DIGEST_SIZE)]
            else:  # a stray file (or no name with a letter): one name at a time
                names = [n for n in names if is_hex_digest(n)]
                ds = list(map(bytes.fromhex, names))
            yield sub.path, names, ds

    def _stat_block(self, sub: str, name: str) -> os.stat_result | None:
        """A block file's stat, or None when it is no regular file or empty (an empty one, left
        by a crash without fsync, is removed)."""
        path = f"{sub}/{name}"
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size == 0:
            try:
                os.unlink(path)
            except OSError:
                pass
            return None
        return st

    def save_index(self) -> bool:
        """Write the index snapshot (temp file, rename) so the next start need not stat every
        block. Called at close and periodically; False when it cannot be written (the next
        start then scans, as it would without one). Not fsynced: after a power loss a torn
        snapshot fails its checksum (a full scan) and an older whole one is reconciled with
        the listing of blocks/, while an fsync of a million-block snapshot at close took 20 s
        on a busy disk."""
        with self._lock:
            digests, sizes = self._policy.entries()
            changes = self._changes
        keep = [i for i, d in enumerate(digests) if len(d) == DIGEST_SIZE]
        if len(keep) != len(digests):
            digests, sizes = [digests[i] for i in keep], [sizes[i] for i in keep]
        data = indexsnap.encode(digests, sizes)
        del digests, sizes
        tmp = None
        try:
            tmp = self._tmp() / f"index.{uuid.uuid4().hex}"
            self._write_temp(tmp, data, fsync=False)
            os.rename(tmp, self._snapshot_file)
        except OSError as e:
            log.warning("cannot write the index snapshot %s: %s", self._snapshot_file, e)
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            return False
        with self._lock:
            self._changes -= changes
        return True

    @property
    def changes(self) -> int:
        """Blocks added or removed since the last snapshot (or start)."""
        return self._changes

    def _clear_dead_tmp(self) -> None:
        """Remove temp files of processes that are gone (a crash mid-write leaves them)."""
        for entry in (self.root / "tmp").iterdir():
            pid = entry.name.split(".", 1)[0]
            if pid.isdigit() and _alive(int(pid)):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def _tmp(self) -> Path:
        """This process's own temp directory (processes may share the cache directory)."""
        pid = os.getpid()
        if self._tmp_pid != pid:
            with self._lock:
                if self._tmp_pid != pid:
                    path = self.root / "tmp" / f"{pid}.{uuid.uuid4().hex[:8]}"
                    path.mkdir(parents=True, exist_ok=True)
                    self._tmp_dir, self._tmp_pid = path, pid
        return self._tmp_dir

    # ---- paths -------------------------------------------------------------------------------

    def block_path(self, d: bytes) -> Path:
        return Path(self._block_file(d))

    def _block_file(self, d: bytes) -> str:
        h = d.hex()
        return f"{self._blocks_dir}/{h[:2]}/{h}"

    def _manifest_path(self, key: bytes) -> Path:
        h = to_hex(key)
        return self.root / "manifests" / h[:2] / h

    # ---- blocks ------------------------------------------------------------------------------

    def __contains__(self, d: bytes) -> bool:
        """True when the block is here (also when another process sharing the dir stored it)."""
        with self._lock:
            if d in self._policy:
                return True
        return self._adopt(d)

    def _adopt(self, d: bytes) -> bool:
        try:
            st = self.block_path(d).stat()
        except OSError:
            return False
        with self._lock:
            if d not in self._policy:
                self._policy.insert(d, st.st_size)
                self._evict_locked()
            return d in self._policy

    def first_missing(self, digests: list[bytes | None], start: int, limit: int = 4096) -> int:
        """Index of the first digest from `start` that is unknown or not here (one lock for the
        whole scan; at most `limit` entries are looked at)."""
        end = min(len(digests), start + limit)
        with self._lock:
            held = self._policy
            for i in range(start, end):
                d = digests[i]
                if d is None or d not in held:
                    return i
        return end

    @property
    def used(self) -> int:
        with self._lock:
            return self._policy.used

    def digests(self) -> list[bytes]:
        with self._lock:
            return self._policy.keys()

    def put(self, data: bytes | memoryview, d: bytes | None = None, *,
            hashed: bool = False) -> bytes:
        """Store verified bytes; returns their digest. If `d` is given the bytes must hash to it;
        `hashed=True` says the caller has just hashed them to `d` (the peer service hashes a
        block as it arrives), so they are not hashed a second time."""
        actual = d if hashed and d is not None else compute_digest(data)
        if d is not None and actual != d:
            raise BlockCorrupt(f"block {to_hex(d)}: bytes hash to {to_hex(actual)}")
        final = self.block_path(actual)
        with self._lock:
            if actual in self._policy and final.exists():
                self._policy.access(actual)
                return actual
        tmp = None
        try:
            tmp = self._tmp() / f"{to_hex(actual)}.{uuid.uuid4().hex}"
            self._write_temp(tmp, data, fsync=self.fsync)
            final.parent.mkdir(exist_ok=True)
            os.rename(tmp, final)
        except OSError as e:
            try:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise StoreError(e.errno, f"cannot store block {to_hex(actual)} in {self.root}: "
                             f"{e.strerror}", str(final)) from None
        st = os.stat(final)
        with self._lock:
            self._verified[actual] = (st.st_ino, st.st_size, st.st_mtime_ns)
            if actual not in self._policy:
                self._policy.insert(actual, len(data))
                self._changes += 1
            self._evict_locked()
        return actual

    @staticmethod
    def _write_temp(path: Path, data: bytes | memoryview, *, fsync: bool) -> None:
        """Write a new file whole (fsynced if asked); the caller renames it into place."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def open_block(self, d: bytes, release: tuple[bytes, int] | None = None) -> tuple[int, int]:
        """Open a block for reading with a lease held: (fd, size). The caller must call
        `close_block(d, fd)`. Hashes the file first unless this process already verified it
        unchanged (same inode, size and mtime). Raises FileNotFoundError when absent,
        BlockCorrupt when it fails the check. Recently used descriptors are kept open.
        `release` = (digest, fd) of a block to close_block in the same critical section."""
        fds = self._fds
        fd = fds.get(d)
        if fd is None:
            fd = os.open(self._block_file(d), os.O_RDONLY)
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        close_released = False
        with self._lock:
            if release is not None:
                close_released = self._unlease_locked(*release)
            cached = fds.get(d)
            if cached is None:
                fds[d] = fd
                if len(fds) > self._max_fds:
                    self._trim_fds_locked()
            elif cached != fd:  # another thread cached one meanwhile: use it
                os.close(fd)
                fd = cached
            self._leases[d] = self._leases.get(d, 0) + 1
            known = self._verified.get(d) == stamp
            if d not in self._policy:
                self._policy.insert(d, st.st_size)
            self._policy.access(d)
        if close_released:
            os.close(release[1])  # type: ignore[index]
        if not known:
            try:
                self._verify_fd(d, fd, st.st_size, self._block_file(d))
            except BaseException:
                self.close_block(d, fd)
                raise
            with self._lock:
                self._verified[d] = stamp
        return fd, st.st_size

    def _trim_fds_locked(self) -> None:
        """Close the least recently opened descriptors that no reader holds (FIFO: cheap)."""
        excess = len(self._fds) - self._max_fds
        for old in list(itertools.islice(self._fds, excess + 16)):
            if excess <= 0:
                break
            if old not in self._leases:
                os.close(self._fds.pop(old))
                excess -= 1

    def _verify_fd(self, d: bytes, fd: int, size: int, path: str) -> None:
        data = os.pread(fd, size, 0) if size else b""
        if len(data) != size or compute_digest(data) != d:
            log.warning("block %s failed verification (%d bytes on disk); removing it",
                        to_hex(d), len(data))
            self.corrupt_blocks += 1
            self.remove(d)
            raise BlockCorrupt(f"block file {path} is truncated or tampered; removed")

    def close(self) -> None:
        """Write the index snapshot if the index changed, and close the cached block
        descriptors: a closed node must not keep evicted or deleted block files' space on disk
        (leased ones close when their lease ends)."""
        if self._changes:
            self.save_index()
        with self._lock:
            for d, fd in list(self._fds.items()):
                if d not in self._leases:
                    os.close(fd)
            self._fds.clear()

    def verified(self, d: bytes) -> bool:
        """True when this process has checked block `d` since it was last stored or replaced:
        `open_block` of it then costs no hashing (unless the file changed on disk meanwhile),
        so an event loop may call it inline."""
        with self._lock:
            return d in self._verified

    def close_block(self, d: bytes, fd: int) -> None:
        """Release the lease `open_block` took (the descriptor may stay cached)."""
        with self._lock:
            close = self._unlease_locked(d, fd)
        if close:
            os.close(fd)

    def _unlease_locked(self, d: bytes, fd: int) -> bool:
        """Drop one lease; True when the caller must close `fd` (it is not the cached one)."""
        n = self._leases.get(d, 0) - 1
        if n > 0:
            self._leases[d] = n
        else:
            self._leases.pop(d, None)
        if self._policy.used > self.capacity:
            self._evict_locked()
        return self._fds.get(d) != fd

    def read_block(self, d: bytes) -> bytes:
        """The whole verified block as bytes (for serving peers and small reads)."""
        fd, size = self.open_block(d)
        try:
            return os.pread(fd, size, 0)
        finally:
            self.close_block(d, fd)

    def remove(self, d: bytes) -> None:
        """Delete a block now (explicit eviction or a failed check), leases notwithstanding."""
        with self._lock:
            self._drop_locked(d)

    def _drop_locked(self, d: bytes) -> None:
        fd = self._fds.pop(d, None)
        if fd is not None and d not in self._leases:
            os.close(fd)  # a leased descriptor is closed by close_block instead
        self._verified.pop(d, None)
        if self._policy.remove(d):
            self._changes += 1
        try:
            self.block_path(d).unlink()
        except FileNotFoundError:
            pass

    def _can_evict(self, d: bytes) -> bool:
        return d not in self._leases and d not in self._pinned_digests

    def _evict_locked(self) -> None:
        if self._policy.used <= self.capacity:
            return
        for victim in self._policy.evict(self._can_evict):
            self._drop_locked(victim)
            self.evicted_blocks += 1

    def evict(self, target: int = 0) -> int:
        """Evict unpinned, unleased blocks until at most `target` bytes remain; returns bytes freed."""
        with self._lock:
            before = self._policy.used
            for victim in self._policy.evict(self._can_evict, target=target):
                self._drop_locked(victim)
                self.evicted_blocks += 1
            return before - self._policy.used

    # ---- manifests ---------------------------------------------------------------------------

    def load_manifest(self, key: bytes) -> Manifest | None:
        """The stored manifest for a version key, or None (absent or unreadable)."""
        path = self._manifest_path(key)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            m = Manifest.decode(data)
        except ManifestError as e:
            log.warning("ignoring unreadable manifest %s: %s", path, e)
            return None
        return m if m.version.key == key else None

    def save_manifest(self, manifest: Manifest) -> None:
        """Write a manifest atomically, merged with what another process may have written."""
        key = manifest.version.key
        path = self._manifest_path(key)
        tmp = None
        try:
            # Processes sharing the directory merge under one lock, so none loses another's
            # digests between its read and its rename.
            with open(self.root / "manifests" / ".lock", "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                on_disk = self.load_manifest(key)
                if on_disk is not None and on_disk.version == manifest.version:
                    manifest.merge(on_disk)
                tmp = self._tmp() / f"m-{to_hex(key)}.{uuid.uuid4().hex}"
                path.parent.mkdir(exist_ok=True)
                tmp.write_bytes(manifest.encode())
                os.rename(tmp, path)
        except OSError as e:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise StoreError(e.errno, f"cannot store manifest of {manifest.version.url}: "
                             f"{e.strerror}", str(path)) from None
        if key in self._pinned_versions:
            with self._lock:
                self._pin_version_locked(key, manifest)

    def manifests(self) -> Iterator[Manifest]:
        """Every readable stored manifest."""
        for path in (self.root / "manifests").glob("*/*"):
            if is_hex_digest(path.name):
                m = self.load_manifest(bytes.fromhex(path.name))
                if m is not None:
                    yield m

    def delete_manifest(self, key: bytes) -> None:
        self._manifest_path(key).unlink(missing_ok=True)

    # ---- pins --------------------------------------------------------------------------------

    def pin(self, manifest: Manifest) -> None:
        """Keep every block of this version (and blocks it gains later) out of eviction."""
        key = manifest.version.key
        self.save_manifest(manifest)
        (self.root / "pins" / to_hex(key)).write_text(manifest.version.url + "\n")
        with self._lock:
            self._pin_version_locked(key, manifest)

    def unpin(self, key: bytes) -> None:
        (self.root / "pins" / to_hex(key)).unlink(missing_ok=True)
        with self._lock:
            self._pinned_versions.discard(key)
            self._recompute_pins_locked()
            self._evict_locked()

    def pinned(self, key: bytes) -> bool:
        with self._lock:
            return key in self._pinned_versions

    def _pin_version_locked(self, key: bytes, manifest: Manifest | None = None) -> None:
        self._pinned_versions.add(key)
        self._recompute_pins_locked(extra=manifest)

    def _recompute_pins_locked(self, extra: Manifest | None = None) -> None:
        pinned: dict[bytes, int] = {}
        for key in self._pinned_versions:
            m = extra if extra is not None and extra.version.key == key else self.load_manifest(key)
            if m is None:
                continue
            for d in m.digests:
                if d is not None:
                    pinned[d] = pinned.get(d, 0) + 1
        self._pinned_digests = pinned


def _release_free_heap() -> None:
    """Hand the heap pages the index rebuild freed (its lists and buffers) back to the OS
    (glibc keeps them otherwise: ~60 bytes per block of RSS for nothing)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
