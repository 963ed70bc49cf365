"""`meshcache mount` over /dev/fuse: read by cat, sha256sum and Python open; a missing file is
ENOENT; a failing origin is EIO with a log line naming the URL; SIGTERM and umount unmount."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import SMALL_BLOCK, make_bytes

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="needs /dev/fuse and fusermount3 (apt fuse3; make system-deps installs it)")


def start_mount(prefix: str, mnt, cache, log, *extra: str,
                env: dict[str, str] | None = None) -> subprocess.Popen:
    env = dict(os.environ, MESHCACHE_BLOCK_SIZE=str(SMALL_BLOCK), MESHCACHE_FSYNC="0",
               MESHCACHE_ORIGIN_RETRIES="0", MESHCACHE_ORIGIN_TIMEOUT="10", **(env or {}))
    proc = subprocess.Popen([sys.executable, "-c", "from meshcache.cli import main; main()",
                             "--cache-dir", str(cache), "mount", prefix, str(mnt), *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"mount did not come up: {log.name} says "
                                 f"{open(log.name).read()[-2000:]}")
        time.sleep(0.1)
    return proc


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it does not end within 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def stop_mount(proc: subprocess.Popen, mnt) -> None:
    terminate(proc)
    if os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)


@contextlib.contextmanager
def mount_process(prefix: str, tmp_path, *extra: str, env: dict[str, str] | None = None,
                  cache=None):
    """`prefix` mounted at tmp_path/mnt by a `meshcache mount` process (cache tmp_path/cache
    unless given, log tmp_path/mount.log): yields (mountpoint, process) for the duration of the
    block; unmounted after, also on failure."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with open(tmp_path / "mount.log", "w") as log:
        proc = start_mount(prefix, mnt, cache or tmp_path / "cache", log, *extra, env=env)
        try:
            yield mnt, proc
        finally:
            stop_mount(proc, mnt)


@contextlib.contextmanager
def mounted(prefix: str, tmp_path, *extra: str, env: dict[str, str] | None = None):
    """As mount_process, yielding only the mountpoint."""
    with mount_process(prefix, tmp_path, *extra, env=env) as (mnt, _):
        yield mnt


@pytest.fixture
def local_tree(tmp_path):
    root = tmp_path / "origin"
    (root / "models" / "m1").mkdir(parents=True)
    big = make_bytes(40 * SMALL_BLOCK + 321, 11)
    (root / "models" / "m1" / "weights.bin").write_bytes(big)
    (root / "models" / "m1" / "config.json").write_text('{"a": 1}')
    (root / "readme.txt").write_text("hello mount\n")
    return root, big


def test_mount_reads_and_unmounts_on_sigterm(local_tree, tmp_path):
    root, big = local_tree
    with mount_process(str(root), tmp_path) as (mnt, proc):
        assert sorted(os.listdir(mnt)) == ["models", "readme.txt"]
        assert sorted(os.listdir(mnt / "models" / "m1")) == ["config.json", "weights.bin"]
        assert os.stat(mnt / "models" / "m1" / "weights.bin").st_size == len(big)
        cat = subprocess.run(["cat", str(mnt / "readme.txt")], capture_output=True,
                             check=True, timeout=30)
        assert cat.stdout == b"hello mount\n"
        sha = subprocess.run(["sha256sum", str(mnt / "models" / "m1" / "weights.bin")],
                             capture_output=True, text=True, check=True, timeout=60)
        assert sha.stdout.split()[0] == hashlib.sha256(big).hexdigest()
        with open(mnt / "models" / "m1" / "weights.bin", "rb") as f:
            f.seek(7 * SMALL_BLOCK + 5)
            assert f.read(3 * SMALL_BLOCK) == big[7 * SMALL_BLOCK + 5:10 * SMALL_BLOCK + 5]
        with pytest.raises(FileNotFoundError):
            open(mnt / "models" / "missing.bin", "rb")
        with pytest.raises(OSError) as e:
            open(mnt / "readme.txt", "wb")
        assert e.value.errno in (errno.EROFS, errno.EACCES)
        # The bytes are in the cache: the store holds the object's blocks.
        blocks = list((tmp_path / "cache").rglob("*"))
        assert sum(p.stat().st_size for p in blocks if p.is_file()) >= len(big)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
    assert rc == 0, open(tmp_path / "mount.log").read()[-2000:]
    assert not os.path.ismount(mnt)


def test_umount_ends_the_process(local_tree, tmp_path):
    root, _ = local_tree
    with mount_process(str(root), tmp_path) as (mnt, proc):
        assert (mnt / "readme.txt").read_text() == "hello mount\n"
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)
        assert proc.wait(20) == 0


def test_sigterm_with_a_file_held_open_still_ends_the_mount(local_tree, tmp_path):
    """A reader holding a file open does not keep the mount process alive after SIGTERM: the
    mount is detached, the session aborted, and the held file reads fail instead of hanging."""
    root, big = local_tree
    with mount_process(str(root), tmp_path) as (mnt, proc):
        held = open(mnt / "models" / "m1" / "weights.bin", "rb", buffering=0)
        try:
            assert held.read(100) == big[:100]
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            assert time.monotonic() - t0 < 10
            assert not os.path.ismount(mnt)
            with pytest.raises(OSError):
                held.read(100)
        finally:
            with contextlib.suppress(OSError):  # ENOTCONN: the session is gone
                held.close()


@pytest.fixture
def failing_http(tmp_path):
    """An HTTP origin that lists and answers HEAD but fails every GET of a file with 500."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "broken.bin").write_bytes(make_bytes(3 * SMALL_BLOCK, 3))

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path.endswith(".bin"):
                self.send_error(500, "disk on fire")
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_failing_origin_is_eio_with_url_logged(failing_http, tmp_path):
    with mounted(failing_http, tmp_path) as mnt:
        assert "broken.bin" in os.listdir(mnt)
        with pytest.raises(OSError) as e:
            with open(mnt / "broken.bin", "rb") as f:
                f.read()
        assert e.value.errno == errno.EIO
        with pytest.raises(FileNotFoundError):
            open(mnt / "nothere.bin", "rb")
    text = open(tmp_path / "mount.log").read()
    assert f"{failing_http}broken.bin" in text and "ERROR" in text


def test_mount_reads_through_the_host_daemon(local_tree, tmp_path):
    """With a meshcached serving the cache directory, the mount reads through it: the daemon
    fetched the bytes from the origin (its stats say so), the mount process did not."""
    import json

    root, big = local_tree
    cache = tmp_path / "cache"
    env = dict(os.environ, MESHCACHE_CACHE_DIR=str(cache), MESHCACHE_METRICS_LISTEN="",
               MESHCACHE_BLOCK_SIZE=str(SMALL_BLOCK), MESHCACHE_FSYNC="0")
    env.pop("MESHCACHE_CLUSTER_SECRET", None)
    daemon = subprocess.Popen([sys.executable, "-c", "from meshcache.daemon import main; main()"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        assert json.loads(daemon.stdout.readline())["socket"]
        with mount_process(str(root), tmp_path, cache=cache) as (mnt, _):
            with open(mnt / "models" / "m1" / "weights.bin", "rb") as f:
                assert f.read() == big
        stats = subprocess.run([sys.executable, "-c", "from meshcache.cli import main; main()",
                                "--cache-dir", str(cache), "stats", "--json"], env=env,
                               capture_output=True, text=True, check=True, timeout=60)
        assert json.loads(stats.stdout)["bytes_from_origin"] == len(big)
    finally:
        terminate(daemon)


def test_unaligned_direct_reads_across_blocks(local_tree, tmp_path):
    """O_DIRECT hands the handler each read as asked: unaligned offsets and sizes spanning many
    blocks (answered from several mapped block files in one reply), and the end."""
    import random

    root, big = local_tree
    with mounted(str(root), tmp_path) as mnt:
        fd = os.open(mnt / "models" / "m1" / "weights.bin", os.O_RDONLY | os.O_DIRECT)
        try:
            r = random.Random(5)
            for _ in range(40):
                off, n = r.randrange(len(big)), r.randrange(1, 9 * SMALL_BLOCK)
                assert os.pread(fd, n, off) == big[off:off + n], (off, n)
            assert os.pread(fd, 4096, len(big) - 100) == big[-100:]
            assert os.pread(fd, 4096, len(big)) == b""
        finally:
            os.close(fd)


def _reads(log_path) -> int:
    """READ requests the mount has logged (--debug logs each request)."""
    return open(log_path, errors="replace").read().count(": READ node")


def _wait_for_view(cache, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = [p for p in (cache / "fuse-views").glob("*") if not p.name.endswith(".tmp")]
        if views:
            return views
        time.sleep(0.05)
    raise AssertionError("no passthrough view was built")


def test_reread_is_served_by_passthrough(local_tree, tmp_path):
    """Once the mount served a file whole, it keeps a view of it and later opens are read by
    the kernel from that view (FUSE passthrough): no READ request reaches the mount, and
    read, pread and mmap return the right bytes."""
    import mmap

    root, big = local_tree
    with mounted(str(root), tmp_path, "--debug") as mnt:
        path = mnt / "models" / "m1" / "weights.bin"
        assert path.read_bytes() == big
        first = _reads(tmp_path / "mount.log")
        assert first > 0
        views = _wait_for_view(tmp_path / "cache")
        assert [v.read_bytes() for v in views] == [big]
        assert path.read_bytes() == big
        with open(path, "rb") as f:
            assert os.pread(f.fileno(), 1000, 5 * SMALL_BLOCK + 7) == \
                big[5 * SMALL_BLOCK + 7:5 * SMALL_BLOCK + 1007]
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                assert m[:] == big
        assert _reads(tmp_path / "mount.log") == first


def test_cache_du_counts_views_and_evict_removes_them(local_tree, tmp_path):
    """`meshcache cache du` reports the views' bytes; `cache evict URL` removes the URL's view
    with its blocks (and `--all` every view)."""
    import json

    root, big = local_tree
    cache = tmp_path / "cache"

    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-c", "from meshcache.cli import main; main()",
                               "--cache-dir", str(cache), *args], capture_output=True,
                              text=True, check=True, timeout=60,
                              env=dict(os.environ, MESHCACHE_BLOCK_SIZE=str(SMALL_BLOCK),
                                       MESHCACHE_DAEMON="off")).stdout

    with mounted(str(root), tmp_path) as mnt:
        assert (mnt / "models" / "m1" / "weights.bin").read_bytes() == big
        assert (mnt / "readme.txt").read_bytes() == b"hello mount\n"
        _wait_for_view(cache)
        deadline = time.monotonic() + 30
        while len(list((cache / "fuse-views").glob("*"))) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert json.loads(cli("cache", "du", "--json"))["fuse_view_bytes"] == len(big) + 12
    cli("cache", "evict", f"file://{root}/models/m1/weights.bin")
    assert json.loads(cli("cache", "du", "--json"))["fuse_view_bytes"] == 12
    cli("cache", "evict", "--all")
    assert json.loads(cli("cache", "du", "--json"))["fuse_view_bytes"] == 0


def test_a_file_read_in_parts_by_several_opens_gets_a_view(local_tree, tmp_path):
    """Two opens each reading half of a file (neither served it whole): every block is cached
    once they are closed, so the mount builds the view."""
    root, big = local_tree
    half = len(big) // 2
    with mounted(str(root), tmp_path) as mnt:
        path = mnt / "models" / "m1" / "weights.bin"
        with open(path, "rb") as a:
            assert a.read(half) == big[:half]
        with open(path, "rb") as b:
            b.seek(half)
            assert b.read() == big[half:]
        assert [v.read_bytes() for v in _wait_for_view(tmp_path / "cache")] == [big]


def test_a_changed_object_is_not_read_from_its_old_view(local_tree, tmp_path):
    """A view is of one version: after the object changes at the origin (and the metadata TTL
    passes), an open reads the new bytes."""
    root, big = local_tree
    target = root / "models" / "m1" / "weights.bin"
    with mounted(str(root), tmp_path, env={"MESHCACHE_METADATA_TTL": "0.2"}) as mnt:
        path = mnt / "models" / "m1" / "weights.bin"
        assert path.read_bytes() == big
        _wait_for_view(tmp_path / "cache")
        new = make_bytes(len(big), 99)
        target.write_bytes(new)
        os.utime(target, (time.time() + 5, time.time() + 5))
        time.sleep(0.5)
        assert path.read_bytes() == new


def test_reread_is_served_by_the_page_cache_without_views(local_tree, tmp_path):
    """With passthrough off (fuse_view_bytes 0), a file reopened while its version is unchanged
    is read from the kernel's page cache: the second read sends the mount no READ request."""
    root, big = local_tree
    with mounted(str(root), tmp_path, "--debug", env={"MESHCACHE_FUSE_VIEW_BYTES": "0"}) as mnt:
        path = mnt / "models" / "m1" / "weights.bin"
        assert path.read_bytes() == big
        first = _reads(tmp_path / "mount.log")
        assert first > 0
        assert path.read_bytes() == big
        assert _reads(tmp_path / "mount.log") == first
    assert not (tmp_path / "cache" / "fuse-views").exists()


def test_mount_through_fusermount(local_tree, tmp_path):
    """The way a user without root mounts: fusermount3 mounts and hands back /dev/fuse over a
    socket (here run by root, so the same code path); `fusermount3 -u` ends the session."""
    from meshcache import Config, Node
    from meshcache.surfaces.fuse import mount

    root, big = local_tree
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    node = Node(Config.local(cache_dir=str(tmp_path / "cache"), block_size=SMALL_BLOCK,
                             fsync=False))
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            mount(node, str(root), str(mnt), use_fusermount=True)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert not errors and time.monotonic() < deadline, errors
            time.sleep(0.05)
        assert (mnt / "models" / "m1" / "weights.bin").read_bytes() == big
        assert not (tmp_path / "cache" / "fuse-views").exists()  # no passthrough this way
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
        thread.join(20)
        assert not thread.is_alive() and not errors, errors
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
        thread.join(20)
        node.close()


def test_store_too_small_serves_from_memory(local_tree, tmp_path):
    """With room for one block, blocks are evicted while read: the mount answers those reads
    from memory and the bytes are still right."""
    root, big = local_tree
    with mounted(str(root), tmp_path, env={"MESHCACHE_CAPACITY": str(SMALL_BLOCK)}) as mnt:
        assert (mnt / "models" / "m1" / "weights.bin").read_bytes() == big


def test_views_left_by_a_crashed_build_are_removed_others_kept(tmp_path):
    """A temp view of a process that is gone is removed when a mount starts; one of a live
    process (another mount building it) is left alone."""
    from meshcache.surfaces.fuseviews import Views

    root = tmp_path / "views"
    root.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / f"{'ab' * 32}.{dead.pid}.1.tmp").write_bytes(b"half")
    (root / f"{'cd' * 32}.{os.getpid()}.1.tmp").write_bytes(b"building")
    views = Views(str(root), 1 << 20, fsync=False)
    try:
        assert sorted(p.name for p in root.iterdir()) == [f"{'cd' * 32}.{os.getpid()}.1.tmp"]
    finally:
        views.close()


def test_window_answers_exactly_the_bytes_it_holds():
    """A read answered from the leased window is the right slice of the file, and a read that
    runs past what the window holds is not answered from it."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from meshcache.surfaces.fuse import _from_window

    data = make_bytes(10_000, 4)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.integers(1, 3000), min_size=1, max_size=6), st.integers(0, 12_000),
           st.integers(0, 12_000), st.integers(0, 3000))
    def check(cuts, start, offset, size):
        start = min(start, len(data) - 1)
        window, pos = [], start
        for n in cuts:
            end = min(pos + n, len(data))
            if end <= pos:
                break
            window.append((pos, end, memoryview(data)[pos:end]))
            pos = end
        got = _from_window(window, offset, size)
        if size == 0:
            assert got == []
        elif start <= offset and offset + size <= pos:
            assert b"".join(got) == data[offset:offset + size]
        else:
            assert got is None

    check()
