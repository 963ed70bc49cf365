"""Reads from a real S3 endpoint (moto's server mode on 127.0.0.1), directly and chained."""

from __future__ import annotations

import os
import time

import boto3
import fsspec
import pytest
from moto.server import ThreadedMotoServer

from meshcache import Node, ObjectChanged, ObjectNotFound

from tests.conftest import SMALL_BLOCK, make_bytes


@pytest.fixture(scope="module")
def s3_endpoint():
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="models")
    yield url, client
    server.stop()


def opts(url):
    return {"endpoint_url": url, "key": "testing", "secret": "testing"}


def test_s3_cold_hot_and_chained(s3_endpoint, cache_config):
    url, client = s3_endpoint
    data = make_bytes(9 * SMALL_BLOCK + 5, 31)
    client.put_object(Bucket="models", Key="m/weights.bin", Body=data)
    node = Node(cache_config())
    try:
        with node.open("s3://models/m/weights.bin", **opts(url)) as f:
            assert f.read() == data
            assert f.stats["bytes_from_origin"] == len(data)
        with node.open("s3://models/m/weights.bin", **opts(url)) as f:
            assert f.read() == data
            assert f.stats["bytes_from_local"] == len(data)
        st = node.stat("s3://models/m/weights.bin", opts(url))
        assert st["version"].startswith("etag:") and st["cached_blocks"] == 10
        with pytest.raises(ObjectNotFound, match="nothere"):
            node.open("s3://models/nothere", **opts(url))
    finally:
        node.close()
    with fsspec.open("meshcache::s3://models/m/weights.bin", s3=opts(url),
                     meshcache={"config": cache_config().to_dict()}) as f:
        assert f.read(100) == data[:100]
        assert f.stats["bytes_from_local"] == 100


def test_s3_overwrite_is_a_new_version(s3_endpoint, cache_config):
    url, client = s3_endpoint
    old = make_bytes(40 * SMALL_BLOCK, 32)
    client.put_object(Bucket="models", Key="v.bin", Body=old)
    node = Node(cache_config())
    try:
        f = node.open("s3://models/v.bin", **opts(url))
        assert f.read(10) == old[:10]
        new = make_bytes(40 * SMALL_BLOCK, 33)
        client.put_object(Bucket="models", Key="v.bin", Body=new)
        f.seek(35 * SMALL_BLOCK)  # not fetched yet: If-Match fails rather than mixing versions
        with pytest.raises(ObjectChanged):
            f.read(10)
        node.refresh("s3://models/v.bin", opts(url))
        with node.open("s3://models/v.bin", **opts(url)) as g:
            assert g.read() == new
    finally:
        node.close()
