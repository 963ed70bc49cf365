"""Origins that ignore Range: a real http.server (it answers every GET with the whole file) is
read correctly with one GET per version, every block verified and stored as it streams by."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meshcache import Node

from tests.conftest import SMALL_BLOCK, make_bytes


@pytest.fixture
def rangeless(tmp_path):
    """`python -m http.server` over a directory, counting GETs per path."""
    root = tmp_path / "www"
    root.mkdir()
    gets: dict[str, int] = {}

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            gets[self.path] = gets.get(self.path, 0) + 1
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, gets
    finally:
        server.shutdown()
        server.server_close()


def test_one_get_per_version(rangeless, cache_config):
    base, root, gets = rangeless
    data = make_bytes(12 * SMALL_BLOCK + 999, 5)
    (root / "big.bin").write_bytes(data)
    (root / "other.bin").write_bytes(data[::-1][: 3 * SMALL_BLOCK + 1])
    node = Node(cache_config(readahead=8, origin_concurrency=8))
    try:
        with node.open(f"{base}/big.bin") as f:
            assert f.read() == data
        assert gets["/big.bin"] == 1
        st = node.stats()
        assert st["bytes_from_origin"] == len(data)
        assert node.stat(f"{base}/big.bin")["cached_blocks"] == 13
        # A read from the middle of another version on the same (now known) host: one GET.
        assert node.cat(f"{base}/other.bin", SMALL_BLOCK + 5, 2 * SMALL_BLOCK + 9) == \
            data[::-1][SMALL_BLOCK + 5:2 * SMALL_BLOCK + 9]
        assert gets["/other.bin"] == 1
        # Hot: no more GETs.
        with node.open(f"{base}/big.bin") as f:
            f.seek(7 * SMALL_BLOCK + 3)
            assert f.read(SMALL_BLOCK) == data[7 * SMALL_BLOCK + 3:8 * SMALL_BLOCK + 3]
        assert gets["/big.bin"] == 1
    finally:
        node.close()


def test_changed_body_is_refused(rangeless, cache_config):
    """A body longer than the version's stat is not stored past the stat's size."""
    base, root, gets = rangeless
    data = make_bytes(4 * SMALL_BLOCK, 6)
    (root / "grow.bin").write_bytes(data)
    node = Node(cache_config(metadata_ttl=600.0))
    try:
        v = node.version(f"{base}/grow.bin")
        (root / "grow.bin").write_bytes(data + b"more")
        with pytest.raises(Exception, match="changed"):
            node.fetch_sync(v, 2)
    finally:
        node.close()


def test_version_locks_do_not_pile_up(rangeless, cache_config):
    """Each range-less version read takes a lock for one read at a time; once read, its lock
    goes (a daemon reads ever new versions)."""
    base, root, gets = rangeless
    objects = {f"v{i}.bin": make_bytes(2 * SMALL_BLOCK + i, i) for i in range(30)}
    for name, data in objects.items():
        (root / name).write_bytes(data)
    node = Node(cache_config(readahead=4, origin_concurrency=4))
    try:
        for name, data in objects.items():
            assert node.cat(f"{base}/{name}") == data
            assert gets[f"/{name}"] == 1
        fill = next(r for r in node.sources() if r.name == "origin").streamfill
        assert fill is not None and fill.ranges_ok[base] is False
        assert fill.versions_locked == 0
    finally:
        node.close()
