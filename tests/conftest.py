"""Shared fixtures: a node on a fresh cache directory, generated objects on disk."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from meshcache import Config, Node

SMALL_BLOCK = 64 * 1024


def make_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def read_at_once(nodes, url: str, timeout: float = 60.0) -> dict:
    """Every node reads the whole object at the same time (one thread each): node -> bytes."""
    import threading

    out: dict = {}
    readers = [threading.Thread(target=lambda n=n: out.__setitem__(n, n.cat(url)))
               for n in nodes]
    for t in readers:
        t.start()
    for t in readers:
        t.join(timeout)
    return out


@pytest.fixture
def cache_config(tmp_path):
    def make(**overrides):
        base = dict(cache_dir=str(tmp_path / "cache"), block_size=SMALL_BLOCK, fsync=False,
                    readahead=4, metadata_ttl=60.0, origin_timeout=10.0)
        base.update(overrides)
        return Config.local(**base)
    return make


@pytest.fixture
def node(cache_config):
    n = Node(cache_config())
    yield n
    n.close()


@pytest.fixture
def local_object(tmp_path):
    """A file origin: returns (url, bytes)."""
    def make(size: int = 10 * SMALL_BLOCK + 123, seed: int = 1, name: str = "obj.bin"):
        data = make_bytes(size, seed)
        p = tmp_path / "origin" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        return "file://" + str(p), data
    return make


def is_root() -> bool:
    return os.geteuid() == 0


# Strong cluster credentials (as `meshcache secret` makes them): nodes refuse guessable ones.
CLUSTER_SECRET = "81NI1w26Cdtrd9pmtWZeimZjro0LAm2EFHtoPOwT6qg"
OTHER_SECRET = "1oVc10MfHmQpcqi3vxxBdRmVq1S4RP2sFlrtuy_ZbwI"


@pytest.fixture(autouse=True)
def _remove_tmp_path(request):
    """Each test's tmp_path goes when the test ends, passed or failed (lab caches are large).
    Autouse fixtures are set up first and torn down last, so this runs after the fixtures that
    use the directory. (pytest's `tmp_path_retention_policy = none` is not used: it leaves the
    session's directory unlocked, and concurrent pytest sessions then delete it mid-run.)"""
    path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
