"""The `meshcache::` fsspec protocol: chaining, pickling, forked and spawned workers."""

from __future__ import annotations

import multiprocessing as mp
import pickle

import fsspec
import pytest

from meshcache.fs import MeshcacheFileSystem

from tests.conftest import SMALL_BLOCK


def _cfg(tmp_path):
    return {"cache_dir": str(tmp_path / "cache"), "block_size": SMALL_BLOCK, "fsync": False}


def test_chained_open_reads_through_the_cache(tmp_path, local_object):
    url, data = local_object()
    path = url[len("file://"):]
    opts = {"meshcache": {"config": _cfg(tmp_path)}}
    with fsspec.open(f"meshcache::{url}", **opts) as f:
        assert f.read() == data
        assert f.stats["bytes_from_origin"] == len(data)
    with fsspec.open(f"meshcache::{path}", **opts) as f:
        assert f.read() == data
        assert f.stats["bytes_from_local"] == len(data)
    fs, p = fsspec.core.url_to_fs(f"meshcache::{url}", **opts)
    assert isinstance(fs, MeshcacheFileSystem)
    assert fs.info(p)["size"] == len(data) and fs.cat_file(p, 5, 9) == data[5:9]
    assert [e["name"] for e in fs.ls(str(tmp_path / "origin"))] == [path]
    with pytest.raises(FileNotFoundError):
        fs.info(str(tmp_path / "missing"))


def test_pickles_without_its_node(tmp_path, local_object):
    url, data = local_object()
    fs, p = fsspec.core.url_to_fs(f"meshcache::{url}", meshcache={"config": _cfg(tmp_path)})
    fs.cat_file(p)
    back = pickle.loads(pickle.dumps(fs))
    assert back.target_protocol == "file" and back.config_dict == fs.config_dict
    assert back.cat_file(p) == data


def _worker(fs_pickle, path, start, end, q):
    fs = pickle.loads(fs_pickle)
    with fs.open(path) as f:
        f.seek(start)
        chunk = f.read(end - start)
    q.put((start, chunk, fs.node.stats()["bytes_from_origin"]))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_read_through_the_protocol(tmp_path, local_object, method):
    url, data = local_object(size=16 * SMALL_BLOCK, seed=21)
    fs, p = fsspec.core.url_to_fs(f"meshcache::{url}", meshcache={"config": _cfg(tmp_path)})
    # the parent has used its node (its loop thread is running) before the fork
    assert fs.cat_file(p, 0, SMALL_BLOCK) == data[:SMALL_BLOCK]
    ctx = mp.get_context(method)
    q = ctx.Queue()
    parts = [(i * 4 * SMALL_BLOCK, (i + 1) * 4 * SMALL_BLOCK) for i in range(4)]
    procs = [ctx.Process(target=_worker, args=(pickle.dumps(fs), p, s, e, q)) for s, e in parts]
    for proc in procs:
        proc.start()
    got = dict()
    for _ in procs:
        start, chunk, _origin = q.get(timeout=60)
        got[start] = chunk
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    assert b"".join(got[s] for s, _ in parts) == data
    # the workers' blocks landed in the shared cache directory: the parent now reads them locally
    with fs.open(p) as f:
        assert f.read() == data
        assert f.stats["bytes_from_origin"] == 0


def test_pandas_and_pyarrow_read_parquet_through_the_protocol(tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq

    from meshcache.lab.httporigin import OriginServer

    df = pd.DataFrame({"x": range(50_000), "y": [f"row {i}" for i in range(50_000)]})
    path = tmp_path / "t.parquet"
    df.to_parquet(path, row_group_size=5_000)
    opts = {"config": _cfg(tmp_path)}
    with OriginServer(directory=tmp_path) as srv:
        url = srv.url_for("t.parquet")
        back = pd.read_parquet(f"meshcache::{url}", storage_options={"meshcache": opts})
        assert back.equals(df)
        first = srv.requests
        fs, p = fsspec.core.url_to_fs(f"meshcache::{url}", meshcache=opts)
        with fs.open(p) as f:  # pyarrow on the file object: column projection by ranges
            table = pq.read_table(f, columns=["x"])
        assert table.column("x").to_pylist() == list(range(50_000))
        assert srv.requests == first  # every byte came from the cache the first read filled
