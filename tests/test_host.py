"""One cache per host: processes read through the local meshcached (short-circuit block files),
the daemon refuses clients without permission on its socket, and its API is bounded."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import tempfile

import pytest

import meshcache
from meshcache.config import Config
from meshcache.host.client import DaemonClient, DaemonNode, daemon_node
from meshcache.host.frames import encode_frame
from tests.conftest import make_bytes
from tests.host_fixtures import origin  # noqa: F401 (a fixture)
from tests.host_fixtures import SMALL_BLOCK, cache_env, read_in_processes, running_daemon


@pytest.fixture
def short_dir():
    """A cache directory with a short path (Unix socket paths are limited to 107 bytes),
    reachable by every user so the socket's own mode decides who may connect."""
    d = tempfile.mkdtemp(prefix="mc-host-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", d], check=False)


def test_eight_processes_read_through_the_daemon(short_dir, origin):
    data = make_bytes(48 * SMALL_BLOCK + 99, seed=5)
    origin.put("obj.bin", data)
    url = origin.url_for("obj.bin")
    with running_daemon(short_dir) as ready:
        env = cache_env(short_dir, daemon=str(ready["socket"]))
        digests = read_in_processes(url, env)
        assert digests == [hashlib.sha256(data).hexdigest()] * 8
        assert origin.bytes_sent == len(data)
        # Found without MESHCACHE_DAEMON (it serves this cache directory); a hot read is served
        # from the block files the daemon vouched for.
        cfg = Config.from_dict({"cache_dir": short_dir, "block_size": SMALL_BLOCK})
        node = daemon_node(cfg, environ={})
        assert isinstance(node, DaemonNode)
        try:
            with node.open(url) as f:
                assert f.read() == data
                assert f.stats["bytes_from_local"] == len(data)
            assert node.cat(url, 10, 20) == data[10:20]
            stats = node.stats()
            assert stats["bytes_from_origin"] == len(data)
            assert stats["local_clients"] >= 1
            assert node.stat(url)["cached_blocks"] == node.stat(url)["blocks"]
        finally:
            node.close()
        assert origin.bytes_sent == len(data)


def test_module_functions_and_refusals_through_the_daemon(short_dir, origin, monkeypatch):
    data = make_bytes(5 * SMALL_BLOCK, seed=6)
    origin.put("a.bin", data)
    url = origin.url_for("a.bin")
    with running_daemon(short_dir) as ready:
        for k, v in cache_env(short_dir, daemon=str(ready["socket"])).items():
            monkeypatch.setenv(k, v)
        node = meshcache.default_node()
        assert isinstance(node, DaemonNode)
        progress = []
        assert meshcache.prewarm(url, progress.append) == {url: len(data)}
        assert sum(progress) == len(data)
        assert meshcache.cat(url, -7) == data[-7:]
        assert meshcache.refresh(url).size == len(data)
        # The fsspec protocol reads through the daemon as well (version, manifest: its requests).
        import fsspec

        before = meshcache.stats()["local_requests"]
        with fsspec.open("meshcache::" + url, "rb") as f:
            assert f.read() == data
        assert meshcache.stats()["local_requests"] >= before + 3
        # Storage options (origin credentials) from clients are refused by the daemon by
        # default; the library then reads with them in this process (an embedded node).
        with pytest.raises(PermissionError, match="own configuration"):
            node.client.call("version", url, json.dumps({"block_size": 1}), False)
        requests = meshcache.stats()["local_requests"]
        with meshcache.open(url, block_size=1 << 16) as f:
            assert f.read() == data
        assert meshcache.stats()["local_requests"] == requests + 1  # the stats call only
        with pytest.raises(meshcache.ObjectNotFound):
            meshcache.stat("file:///nonexistent/x")
        # Garbage on the socket closes that connection, the daemon keeps serving.
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(ready["socket"]))
        s.sendall(b"\xff\xff\xff\xff")
        assert s.recv(4096)  # an error frame, then EOF
        s.close()
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(ready["socket"]))
        s.sendall(encode_frame([1, "stats", [[[[[[[[[[]]]]]]]]]]]))
        s.recv(4096)
        s.close()
        assert meshcache.stats()["local_refused_frames"] >= 1
        node.close()


def _client_as(uid: int, gid: int, path: str, op: str = "hello", *args: object) -> int:
    """Exit status of a forked child that drops to uid/gid and asks the daemon `op`: 0 answered,
    3 refused (PermissionError), 4 anything else; op "auto": 0 when the library, looking for
    the daemon of cache directory args[0], reads without it."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        code = 4
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            if op == "auto":
                cfg = Config.from_dict({"cache_dir": str(args[0])})
                code = 0 if daemon_node(cfg, environ={}) is None else 5
                os._exit(code)
            DaemonClient(path).call(op, *args)
            code = 0
        except PermissionError:
            code = 3
        except BaseException:
            code = 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run clients as other users")
def test_a_client_without_permission_on_the_socket_is_refused(short_dir):
    with running_daemon(short_dir, socket_group="nogroup") as ready:
        path = str(ready["socket"])
        st = os.stat(path)
        assert st.st_mode & 0o777 == 0o660 and st.st_gid == 65534
        assert _client_as(65534, 65534, path) == 0  # in the socket's group
        assert _client_as(65534, 12345, path) == 3  # neither owner nor in the group
        # The library, finding a daemon that refuses it, reads without it (embedded node).
        assert _client_as(65534, 12345, path, "auto", short_dir) == 0
        # A member may not make the daemon (root here) read a file it could not read itself.
        secret = os.path.join(short_dir, "secret.bin")
        with open(secret, "wb") as f:
            f.write(b"x" * 1000)
        os.chmod(secret, 0o600)
        url = "file://" + secret
        assert _client_as(65534, 65534, path, "version", url, "", False) == 3
        os.chmod(secret, 0o644)
        assert _client_as(65534, 65534, path, "version", url, "", False) == 0
        # The library, finding a daemon it may not use, says so and reads without it.
        cfg = Config.from_dict({"cache_dir": short_dir})
        assert daemon_node(cfg, environ={}) is not None  # root may


def test_a_tampered_block_file_is_not_read_by_a_client(short_dir, origin):
    data = make_bytes(4 * SMALL_BLOCK, seed=11)
    origin.put("t.bin", data)
    url = origin.url_for("t.bin")
    with running_daemon(short_dir) as ready:
        env = cache_env(short_dir, daemon=str(ready["socket"]))
        cfg = Config.from_dict({"cache_dir": short_dir, "block_size": SMALL_BLOCK})
        node = daemon_node(cfg, environ={"MESHCACHE_DAEMON": env["MESHCACHE_DAEMON"]})
        assert node is not None
        try:
            assert node.cat(url) == data
            v = node.version(url)
            victim = node.store.block_path(node.manifest(v).digests[2])
            victim.write_bytes(b"\0" * SMALL_BLOCK)  # same size, other bytes, new mtime
            with node.open(url) as f:
                assert f.read() == data  # the daemon re-checked it, dropped it, fetched again
            assert node.stats()["corrupt_blocks"] == 1
            assert origin.bytes_sent == len(data) + SMALL_BLOCK
        finally:
            node.close()


def test_sigterm_with_clients_connected_exits_cleanly(short_dir):
    """SIGTERM while local clients are connected (one idle after a request, one connected and
    silent): the daemon exits 0 and logs no traceback."""
    import signal
    import sys
    import time

    env = dict(os.environ)
    env.update(cache_env(short_dir, metrics_listen=""))
    env.pop("MESHCACHE_DAEMON", None)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "meshcache.daemon", "-v"], env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        client = DaemonClient(os.path.join(short_dir, "meshcached.sock"), timeout=10)
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ready = json.loads(proc.stdout.readline())
            assert json.loads(client.call("hello"))["pid"] == proc.pid
            silent.connect(ready["socket"])
            for _ in range(100):  # the silent one is accepted by the daemon's loop
                if json.loads(client.call("stats"))["local_clients"] == 2:
                    break
                time.sleep(0.05)
            assert json.loads(client.call("stats"))["local_clients"] == 2
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        finally:
            client.close()
            silent.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        err.seek(0)
        log = err.read()
    assert code == 0, log
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert "shutting down" in log and "stopped" in log  # it did get the signal (-v logs it)
