"""pandas and pyarrow reading Parquet from S3 through meshcache (`meshcache::s3://...`).

The same `storage_options` a plain `s3://` read takes go under the "s3" key; the "meshcache" key
picks the cache. The second read of the table comes from the local store. Without --endpoint-url
it starts a local S3 server (moto) with a small table, so it runs anywhere.

    python examples/pandas_s3.py [--endpoint-url URL --url s3://bucket/key.parquet]
"""

from __future__ import annotations

import argparse
import io
import tempfile

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq


def start_s3(rows: int) -> tuple[object, str, str]:
    """A moto S3 server on 127.0.0.1 holding s3://datasets/events.parquet."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="datasets")
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user": rng.integers(0, 1000, rows), "value": rng.random(rows),
                       "kind": rng.choice(["click", "view", "buy"], rows)})
    buf = io.BytesIO()
    df.to_parquet(buf, row_group_size=max(1, rows // 8))
    s3.put_object(Bucket="datasets", Key="events.parquet", Body=buf.getvalue())
    return server, endpoint, "s3://datasets/events.parquet"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint-url")
    p.add_argument("--url")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--cache-dir")
    a = p.parse_args()
    server = None
    if a.endpoint_url is None:
        server, endpoint, url = start_s3(a.rows)
    else:
        endpoint, url = a.endpoint_url, a.url
    try:
        with tempfile.TemporaryDirectory(prefix="meshcache-pandas-") as tmp:
            run(url, endpoint, a.cache_dir or tmp)
    finally:
        if server is not None:
            server.stop()


def run(url: str, endpoint: str, cache_dir: str) -> None:
    opts = {"s3": {"endpoint_url": endpoint, "key": "testing", "secret": "testing"},
            "meshcache": {"config": {"cache_dir": cache_dir, "block_size": 1 << 20,
                                     "fsync": False}}}
    chained = f"meshcache::{url}"
    df = pd.read_parquet(chained, storage_options=opts)
    totals = df.groupby("kind")["value"].sum().round(2).to_dict()
    fs = fsspec.filesystem("meshcache", target_protocol="s3", target_options=opts["s3"],
                           config=opts["meshcache"]["config"])
    first = fs.node.stats()
    print(f"pandas: {len(df)} rows, sum by kind {totals}; bytes came from origin "
          f"{first['bytes_from_origin']}, local store {first['bytes_from_local']}", flush=True)
    # pyarrow reads the column it needs through the same cache: hot now.
    with fsspec.open(chained, **opts) as f:
        table = pq.read_table(f, columns=["value"])
    second = fs.node.stats()
    print(f"pyarrow: column 'value' of {table.num_rows} rows; bytes came from origin "
          f"{second['bytes_from_origin'] - first['bytes_from_origin']}, local store "
          f"{second['bytes_from_local'] - first['bytes_from_local']}", flush=True)


if __name__ == "__main__":
    main()
