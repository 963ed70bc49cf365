"""A FUSE session over /dev/fuse without libfuse: mount, a pool of threads that read requests and
write replies, passthrough backing files, unmount.

Written for two things libfuse 3.14 (Debian 12's) cannot give a Python filesystem: FUSE
passthrough (kernel 6.9+; libfuse >= 3.16), where the kernel reads an open file's bytes from a
backing file itself, and replies written straight from the block files' pages with one `writev`
(no ctypes callback, no copy into a library buffer). The protocol's encoding is
`meshcache.core.fusewire`; what the files are is the `Filesystem` given to `serve`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from meshcache.core import fusewire as fw

log = logging.getLogger("meshcache.surfaces.fusedev")

Buffers = Sequence["bytes | memoryview"]
_REQUEST_BUFFER = 136 * 1024  # >= the kernel's minimum (8 KiB + max_write); names are <= 1 KiB
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MNT_DETACH = 1, 2, 4, 2
STOP_GRACE = 2.0  # seconds an unmount waits for files still open on the mount

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class FuseError(OSError):
    """A request's failure, sent to the kernel as its errno."""

    def __init__(self, code: int) -> None:
        super().__init__(code, os.strerror(code))


@dataclass(frozen=True, slots=True)
class Opened:
    """An OPEN's answer: the handle, and how the kernel should read the file."""

    fh: int
    direct_io: bool = False  # every read comes to the filesystem, into the reader's buffer
    keep_cache: bool = False  # the kernel may keep the pages it has of this file
    backing_id: int = 0  # > 0: the kernel reads a backing file itself (passthrough)


class Filesystem(Protocol):
    """What a session asks of a read-only filesystem (inode numbers: 1 is the root)."""

    def lookup(self, parent: int, name: str) -> fw.Attr | None: ...

    def forget(self, ino: int, nlookup: int) -> None: ...

    def getattr(self, ino: int) -> fw.Attr: ...

    def readdir(self, ino: int) -> list[tuple[int, str, int]]: ...

    def open(self, ino: int, flags: int) -> Opened: ...

    def read(self, fh: int, offset: int, size: int) -> Buffers: ...

    def release(self, fh: int) -> None: ...


@dataclass
class Limits:
    """What the session asks of the kernel at INIT."""

    max_read: int = 1 << 20
    max_readahead: int = 4 << 20
    attr_ttl: float = 60.0
    negative_ttl: float = 1.0
    statfs_bsize: int = 1 << 20
    passthrough: bool = False  # ask for it (needs CAP_SYS_ADMIN for the backing ioctl)
    direct_io_mmap: bool = True  # ask that direct-io files may still be mmap'ed


@dataclass
class Negotiated:
    """What the kernel agreed to at INIT."""

    minor: int = 0
    flags: int = 0
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def passthrough(self) -> bool:
        return bool(self.flags & fw.PASSTHROUGH)


class Device:
    """The session's /dev/fuse descriptor and the ioctls on it."""

    def __init__(self, fd: int, mountpoint: str) -> None:
        self.fd = fd
        self.mountpoint = mountpoint
        self.negotiated = Negotiated()
        self.conn = 0  # the connection's id (the mount's st_dev minor), set by mount

    def backing_open(self, fd: int) -> int:
        """Register `fd` as a backing file; returns its backing id (FOPEN_PASSTHROUGH)."""
        arg = bytearray(fw.backing_map(fd))
        return fcntl.ioctl(self.fd, fw.IOC_BACKING_OPEN, arg, True)  # True: the result, not a copy

    def backing_close(self, backing_id: int) -> None:
        try:
            fcntl.ioctl(self.fd, fw.IOC_BACKING_CLOSE, backing_id.to_bytes(4, "little"))
        except OSError as e:
            log.debug("backing close %d: %s", backing_id, e)


def mount(mountpoint: str, *, max_read: int, fsname: str = "meshcache",
          subtype: str = "meshcache", use_fusermount: bool | None = None) -> Device:
    """Open /dev/fuse and mount it read-only at `mountpoint`: mount(2) as root, else through
    fusermount3 (setuid), which hands the descriptor back over a socket."""
    if use_fusermount is None:
        use_fusermount = os.geteuid() != 0
    mountpoint = os.path.abspath(mountpoint)
    if use_fusermount:
        fd = _fusermount(mountpoint, f"ro,nosuid,nodev,default_permissions,max_read={max_read},"
                                     f"fsname={fsname},subtype={subtype}")
    else:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        data = (f"fd={fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()},"
                f"default_permissions,max_read={max_read}")
        if _libc.mount(fsname.encode(), mountpoint.encode(), f"fuse.{subtype}".encode(),
                       _MS_RDONLY | _MS_NOSUID | _MS_NODEV, data.encode()) != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"mount {mountpoint}: {os.strerror(err)}")
    dev = Device(fd, mountpoint)
    dev.conn = _connection_id(mountpoint)
    return dev


def _connection_id(mountpoint: str) -> int:
    """The FUSE connection of the mount at `mountpoint` (its device minor), read from
    /proc/self/mountinfo: a stat of the mountpoint would wait for this session's own answer."""
    conn = 0
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == mountpoint:
                conn = int(fields[2].split(":")[1])  # the newest mount there wins
    return conn


def _fusermount(mountpoint: str, opts: str) -> int:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        done = subprocess.run(["fusermount3", "-o", opts, "--", mountpoint], env=env,
                              pass_fds=(theirs.fileno(),), capture_output=True, text=True,
                              timeout=30)
        if done.returncode != 0:
            raise OSError(errno.EPERM, f"fusermount3: {done.stderr.strip()}")
        theirs.close()
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        if not fds:
            raise OSError(errno.EIO, "fusermount3 sent no descriptor")
        os.set_inheritable(fds[0], False)
        return fds[0]
    finally:
        ours.close()
        theirs.close()


def unmount(dev: Device) -> None:
    """Detach the mount; the kernel then ends the session (reads on /dev/fuse fail ENODEV)."""
    if os.geteuid() == 0:
        if _libc.umount2(dev.mountpoint.encode(), _MNT_DETACH) != 0:
            log.debug("umount %s: %s", dev.mountpoint, os.strerror(ctypes.get_errno()))
    else:
        subprocess.run(["fusermount3", "-u", "-z", dev.mountpoint], check=False,
                       capture_output=True, timeout=30)


def abort(dev: Device) -> None:
    """End the session even while files on it are open (root: the connection's abort file)."""
    try:
        with open(f"/sys/fs/fuse/connections/{dev.conn}/abort", "w") as f:
            f.write("1")
    except OSError as e:
        log.debug("abort of FUSE connection %d: %s", dev.conn, e)


class Session:
    """Threads that answer the kernel's requests for `fs` until the mount goes away."""

    def __init__(self, dev: Device, fs: Filesystem, limits: Limits, *, threads: int = 8,
                 debug: bool = False) -> None:
        self.dev = dev
        self.fs = fs
        self.limits = limits
        self.debug = debug
        self._threads = [threading.Thread(target=self._worker, daemon=True,
                                          name=f"meshcache-fuse-{i}") for i in range(threads)]
        self._dirs: dict[int, list[tuple[int, str, int]]] = {}
        self._dir_fh = iter(range(1, 1 << 62))
        self._lock = threading.Lock()
        self._stopped_at = 0.0

    def run(self) -> None:
        """Serve until unmounted; SIGTERM / SIGINT unmount when called in the main thread."""
        main = threading.current_thread() is threading.main_thread()
        old = {}
        if main:
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, lambda *_: self.stop())
        try:
            for t in self._threads:
                t.start()
            while alive := [t for t in self._threads if t.is_alive()]:
                alive[0].join(0.2)
                if self._stopped_at and time.monotonic() - self._stopped_at > STOP_GRACE:
                    # Files still open on the detached mount keep the session alive: abort it
                    # (needs fusectl mounted), else leave the threads blocked on /dev/fuse to
                    # the process's exit, which ends the session.
                    abort(self.dev)
                    alive[0].join(1.0)
                    if not self._ended():
                        log.warning("%s: files still open there; leaving the session to end "
                                    "with this process", self.dev.mountpoint)
                        return
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            if self._ended():
                os.close(self.dev.fd)

    def stop(self) -> None:
        """Unmount (lazily: files open there keep working until `run` gives up on them)."""
        if not self._stopped_at:
            self._stopped_at = time.monotonic()
            unmount(self.dev)

    def _ended(self) -> bool:
        return not any(t.is_alive() for t in self._threads)

    # ---- the loop ----------------------------------------------------------------------------

    def _worker(self) -> None:
        buf = bytearray(_REQUEST_BUFFER)
        view = memoryview(buf)
        fd = self.dev.fd
        while True:
            try:
                n = os.readv(fd, [buf])
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                    continue  # a request interrupted before we read it
                if e.errno != errno.ENODEV:
                    log.error("reading /dev/fuse: %s", e)
                return  # unmounted
            try:
                req = fw.parse_request(view[:n])
            except fw.FuseWireError as e:
                log.error("bad request from the kernel: %s", e)
                continue
            if self.debug:
                log.info("request %d: %s node %d pid %d", req.unique,
                         fw.NAMES.get(req.opcode, req.opcode), req.nodeid, req.pid)
            reply = self._answer(req)
            if reply is None:
                continue
            error, payload = reply
            size = sum(len(b) for b in payload)
            try:
                os.writev(fd, [fw.reply_header(req.unique, size, error), *payload])
            except OSError as e:
                if e.errno == errno.ENODEV:
                    return
                if e.errno != errno.ENOENT:  # ENOENT: the request was interrupted meanwhile
                    log.error("reply to opcode %d: %s", req.opcode, e)
            finally:
                del payload

    def _answer(self, req: fw.Request) -> tuple[int, Buffers] | None:
        """(errno, payload) for the request; None for those without a reply."""
        try:
            if req.opcode in fw.NO_REPLY:
                if req.opcode != fw.INTERRUPT:
                    for ino, n in fw.parse_forgets(req.opcode, req.nodeid, req.arg):
                        self.fs.forget(ino, n)
                return None
            return 0, self._dispatch(req)
        except FuseError as e:
            return e.errno, ()
        except fw.FuseWireError as e:
            log.error("opcode %d: %s", req.opcode, e)
            return errno.EINVAL, ()
        except Exception:
            log.exception("opcode %d failed", req.opcode)
            return errno.EIO, ()

    def _dispatch(self, req: fw.Request) -> Buffers:
        op, fs, lim = req.opcode, self.fs, self.limits
        if op == fw.READ:
            r = fw.parse_read(req.arg)
            return fs.read(r.fh, r.offset, min(r.size, lim.max_read))
        if op == fw.LOOKUP:
            attr = fs.lookup(req.nodeid, fw.parse_name(req.arg))
            if attr is None:
                return (fw.negative_entry_reply(lim.negative_ttl),)
            return (fw.entry_reply(attr, lim.attr_ttl),)
        if op == fw.GETATTR:
            return (fw.attr_reply(fs.getattr(req.nodeid), lim.attr_ttl),)
        if op == fw.OPEN:
            flags = fw.parse_open(req.arg)
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
                raise FuseError(errno.EROFS)
            o = fs.open(req.nodeid, flags)
            oflags = ((fw.FOPEN_DIRECT_IO if o.direct_io else 0)
                      | (fw.FOPEN_KEEP_CACHE if o.keep_cache else 0)
                      | (fw.FOPEN_PASSTHROUGH if o.backing_id > 0 else 0))
            return (fw.open_reply(o.fh, oflags, o.backing_id),)
        if op == fw.RELEASE:
            fs.release(fw.parse_release(req.arg))
            return ()
        if op == fw.OPENDIR:
            entries = fs.readdir(req.nodeid)
            with self._lock:
                fh = next(self._dir_fh)
                self._dirs[fh] = entries
            return (fw.open_reply(fh),)
        if op == fw.READDIR:  # READDIRPLUS is never asked for: ENOSYS below
            r = fw.parse_read(req.arg)
            entries = self._dirs.get(r.fh)
            if entries is None:
                raise FuseError(errno.EBADF)
            return (fw.dirents(entries, r.offset, r.size),)
        if op == fw.RELEASEDIR:
            with self._lock:
                self._dirs.pop(fw.parse_release(req.arg), None)
            return ()
        if op == fw.STATFS:
            return (fw.statfs_reply(bsize=lim.statfs_bsize),)
        if op == fw.INIT:
            return (self._init(fw.parse_init(req.arg)),)
        if op in (fw.FLUSH, fw.ACCESS, fw.DESTROY):
            return ()
        raise FuseError(errno.ENOSYS)  # xattrs, statx, lseek, locks: the kernel's defaults

    def _init(self, init: fw.Init) -> bytes:
        if init.major != fw.MAJOR or init.minor < 31:
            raise FuseError(errno.EPROTO)
        lim = self.limits
        want = fw.ASYNC_READ | fw.BIG_WRITES | fw.PARALLEL_DIROPS | fw.MAX_PAGES | fw.INIT_EXT
        if lim.direct_io_mmap:
            want |= fw.DIRECT_IO_ALLOW_MMAP
        if lim.passthrough:
            want |= fw.PASSTHROUGH
        flags = want & init.flags
        minor = min(fw.MINOR, init.minor)
        neg = self.dev.negotiated
        neg.minor, neg.flags = minor, flags
        neg.ready.set()
        pages = max(1, lim.max_read // 4096)
        log.debug("FUSE %d.%d, flags %#x", fw.MAJOR, minor, flags)
        return fw.init_reply(minor=minor, max_readahead=min(init.max_readahead, lim.max_readahead),
                             flags=flags, max_write=128 * 1024, max_pages=pages,
                             max_stack_depth=1 if flags & fw.PASSTHROUGH else 0)
