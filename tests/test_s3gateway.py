"""The S3 gateway end to end: boto3 and the AWS CLI against meshcache's gateway, with a moto
server as the origin behind it (ranged, whole, conditional, missing key, bad signature, listing,
presigned URLs, read-only)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time

import boto3
import botocore
import pytest
import requests
from botocore.config import Config as BotoConfig
from moto.server import ThreadedMotoServer

from meshcache import Node
from meshcache.surfaces.s3gateway import Bucket, GatewayServer, S3Gateway

from tests.conftest import SMALL_BLOCK, make_bytes

KEY, SECRET = "AKIDMESHCACHETEST", "meshcache-test-secret"


@pytest.fixture(scope="module")
def origin():
    """A moto S3 server holding bucket 'origin-bucket' with a few objects."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket="origin-bucket")
        objects = {"models/a/weights.bin": make_bytes(5 * SMALL_BLOCK + 77, 1),
                   "models/a/config.json": b'{"layers": 2}',
                   "models/b/tokenizer.json": make_bytes(3000, 2),
                   "models/readme.txt": b"hello"}
        for k, v in objects.items():
            client.put_object(Bucket="origin-bucket", Key=k, Body=v)
        yield url, objects
    finally:
        server.stop()


@pytest.fixture
def gateway(origin, cache_config):
    url, objects = origin
    node = Node(cache_config())
    opts = {"endpoint_url": url, "key": "testing", "secret": "testing"}
    gw = S3Gateway(node, {"models": Bucket("models", "s3://origin-bucket/models/", opts)},
                   {KEY: SECRET})
    server = GatewayServer(gw)
    host, port = server.start("127.0.0.1:0")
    try:
        yield f"http://{host}:{port}", node, objects
    finally:
        server.close()
        node.close()


def client(endpoint, secret=SECRET, **config):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=KEY, aws_secret_access_key=secret,
                        config=BotoConfig(retries={"max_attempts": 1}, **config))


def test_get_whole_ranged_head_and_sources(gateway):
    endpoint, node, objects = gateway
    s3 = client(endpoint)
    data = objects["models/a/weights.bin"]
    got = s3.get_object(Bucket="models", Key="a/weights.bin")
    assert got["Body"].read() == data
    assert got["ContentLength"] == len(data)
    assert node.stats()["bytes_from_origin"] == len(data)
    # Hot now: served from the store, no new origin bytes.
    part = s3.get_object(Bucket="models", Key="a/weights.bin", Range="bytes=70000-200000")
    assert part["Body"].read() == data[70000:200001]
    assert part["ContentRange"] == f"bytes 70000-200000/{len(data)}"
    assert s3.get_object(Bucket="models", Key="a/weights.bin",
                         Range="bytes=-100")["Body"].read() == data[-100:]
    assert s3.get_object(Bucket="models", Key="a/weights.bin",
                         Range=f"bytes={len(data) - 5}-")["Body"].read() == data[-5:]
    assert node.stats()["bytes_from_origin"] == len(data)
    head = s3.head_object(Bucket="models", Key="a/weights.bin")
    assert head["ContentLength"] == len(data)
    # The origin's ETag passes through (moto's is the MD5 of the body).
    assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    assert s3.get_object(Bucket="models", Key="readme.txt")["Body"].read() == b"hello"


def test_conditions_and_invalid_range(gateway):
    endpoint, _, objects = gateway
    s3 = client(endpoint)
    etag = s3.head_object(Bucket="models", Key="a/config.json")["ETag"]
    assert s3.get_object(Bucket="models", Key="a/config.json",
                         IfMatch=etag)["Body"].read() == objects["models/a/config.json"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket="models", Key="a/config.json", IfMatch='"0000"')
    assert e.value.response["Error"]["Code"] == "PreconditionFailed"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket="models", Key="a/config.json", IfNoneMatch=etag)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket="models", Key="a/config.json", Range="bytes=5000-6000")
    assert e.value.response["Error"]["Code"] == "InvalidRange"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_errors_map_to_s3(gateway):
    endpoint, _, _ = gateway
    s3 = client(endpoint)
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket="models", Key="a/missing.bin")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket="models", Key="a/missing.bin")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.get_object(Bucket="nobucket", Key="x")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client(endpoint, secret="wrong").get_object(Bucket="models", Key="readme.txt")
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # Unsigned requests are refused; writes are refused with a clear message.
    r = requests.get(f"{endpoint}/models/readme.txt", timeout=10)
    assert r.status_code == 403 and b"<Code>AccessDenied</Code>" in r.content
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket="models", Key="new.txt", Body=b"x")
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    assert "read-only" in e.value.response["Error"]["Message"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket="models", Key="a/../../secret")
    assert e.value.response["Error"]["Code"] == "InvalidArgument"


def test_presigned_url(gateway):
    endpoint, _, objects = gateway
    v2 = client(endpoint).generate_presigned_url(
        "get_object", Params={"Bucket": "models", "Key": "readme.txt"}, ExpiresIn=60)
    r = requests.get(v2, timeout=10)
    assert r.status_code == 400 and b"Signature Version 4" in r.content
    s3 = client(endpoint, signature_version="s3v4")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "models",
                                                          "Key": "b/tokenizer.json"},
                                    ExpiresIn=60)
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.content == objects["models/b/tokenizer.json"]
    bad = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    r = requests.get(bad, timeout=10)
    assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content


def test_listing_and_location(gateway):
    endpoint, _, _ = gateway
    s3 = client(endpoint)
    flat = s3.list_objects_v2(Bucket="models")
    assert sorted(o["Key"] for o in flat["Contents"]) == [
        "a/config.json", "a/weights.bin", "b/tokenizer.json", "readme.txt"]
    sizes = {o["Key"]: o["Size"] for o in flat["Contents"]}
    assert sizes["readme.txt"] == 5
    tree = s3.list_objects_v2(Bucket="models", Delimiter="/")
    assert [p["Prefix"] for p in tree["CommonPrefixes"]] == ["a/", "b/"]
    assert [o["Key"] for o in tree["Contents"]] == ["readme.txt"]
    sub = s3.list_objects_v2(Bucket="models", Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in sub["Contents"]] == ["a/config.json", "a/weights.bin"]
    paged = s3.get_paginator("list_objects_v2").paginate(Bucket="models",
                                                         PaginationConfig={"PageSize": 1})
    pages = list(paged)
    assert len(pages) == 4
    assert [o["Key"] for p in pages for o in p["Contents"]] == sorted(sizes)
    loc = s3.get_bucket_location(Bucket="models")
    assert loc["LocationConstraint"] is None  # us-east-1


def test_aws_cli_cp_and_ls(gateway, tmp_path):
    endpoint, _, objects = gateway
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    aws = [sys.executable, "-m", "awscli", "--endpoint-url", endpoint]
    out = tmp_path / "w.bin"
    subprocess.run(aws + ["s3", "cp", "s3://models/a/weights.bin", str(out)], env=env,
                   check=True, capture_output=True, timeout=120)
    assert out.read_bytes() == objects["models/a/weights.bin"]
    ls = subprocess.run(aws + ["s3", "ls", "s3://models/a/"], env=env, check=True,
                        capture_output=True, text=True, timeout=120)
    assert "weights.bin" in ls.stdout and "config.json" in ls.stdout
    bad = subprocess.run(aws + ["s3", "cp", "s3://models/a/none.bin", str(tmp_path / "n")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "404" in bad.stderr


def test_meshcached_serves_the_gateway(tmp_path):
    """meshcached starts the gateway when s3_listen is set and stops it on SIGTERM."""
    import json
    import signal

    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "x.bin").write_bytes(make_bytes(100_000, 9))
    env = dict(os.environ, MESHCACHE_CACHE_DIR=str(tmp_path / "cache"), MESHCACHE_FSYNC="0",
               MESHCACHE_LISTEN="127.0.0.1:0", MESHCACHE_CLUSTER_SECRET="9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c",
               MESHCACHE_METRICS_LISTEN="",
               MESHCACHE_S3_LISTEN="127.0.0.1:0",
               MESHCACHE_S3_BUCKETS=json.dumps({"files": f"file://{origin}/"}),
               MESHCACHE_S3_ACCESS_KEYS=json.dumps({KEY: SECRET}))
    proc = subprocess.Popen([sys.executable, "-c", "from meshcache.daemon import main; main()"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        s3 = client(ready["s3"])
        assert s3.get_object(Bucket="files", Key="x.bin")["Body"].read() == \
            (origin / "x.bin").read_bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_origin_failure_before_and_after_the_status_line(cache_config):
    """An origin that fails before any byte is sent is an S3 error (503); one that fails after
    the status line cuts the body short (the client sees an incomplete read, never wrong
    bytes), and the gateway goes on serving."""
    from meshcache.lab.httporigin import OriginServer

    data = make_bytes(6 * SMALL_BLOCK, 12)
    with OriginServer() as srv:
        srv.put("d/x.bin", data)
        srv.put("d/y.bin", data[::-1])
        node = Node(cache_config(origin_retries=0, metadata_ttl=600.0))
        gw = S3Gateway(node, {"web": Bucket("web", srv.url_for("d/"))}, {KEY: SECRET})
        server = GatewayServer(gw)
        host, port = server.start("127.0.0.1:0")
        try:
            s3 = client(f"http://{host}:{port}")
            v = node.version(srv.url_for("d/x.bin"))
            node.fetch_sync(v, 0)  # block 0 hot: the status line goes out before block 1
            srv.refuse("d/x.bin", 500)
            body = s3.get_object(Bucket="web", Key="x.bin")["Body"]
            with pytest.raises((botocore.exceptions.IncompleteReadError,
                                botocore.exceptions.ResponseStreamingError)):
                body.read()
            srv.refuse("d/y.bin", 500)
            with pytest.raises(botocore.exceptions.ClientError) as e:
                s3.get_object(Bucket="web", Key="y.bin")
            assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            srv.unrefuse("d/x.bin")
            assert s3.get_object(Bucket="web", Key="x.bin")["Body"].read() == data
        finally:
            server.close()
            node.close()


def _raw_get(address: tuple[str, int], path: str, rcvbuf: int) -> socket.socket:
    """A GET sent on a plain socket with a small receive buffer (the gateway must wait for it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(address)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {address[0]}\r\n\r\n".encode())
    return sock


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_blocks_go_out_to_slow_and_vanishing_clients(cache_config):
    """Hot blocks (checked by this process or not yet) and cold ones, sent straight from their
    block files into the socket: a client reading slowly through a small buffer gets every byte
    in order; one that hangs up mid-body leaves no descriptor behind and the gateway goes on."""
    from meshcache.lab.httporigin import OriginServer

    nblocks = 160  # 10 MiB: more than the socket buffers hold, so the gateway must wait
    data = make_bytes(nblocks * SMALL_BLOCK - 123, 21)
    with OriginServer() as srv:
        srv.put("d/x.bin", data)
        url = srv.url_for("d/x.bin")
        other = Node(cache_config())  # another process's node stored blocks 0-59
        v = other.version(url)
        for i in range(60):
            other.fetch_sync(v, i)
        other.close()
        node = Node(cache_config(metadata_ttl=600.0))
        for i in range(60, 100):  # stored (so checked) by the gateway's own node
            node.fetch_sync(node.version(url), i)
        server = GatewayServer(S3Gateway(node, {"web": Bucket("web", srv.url_for("d/"))}, {},
                                         anonymous=True))
        address = server.start("127.0.0.1:0")
        try:
            sock = _raw_get(address, "/web/x.bin", 4096)
            got = bytearray()
            with sock:
                while b"\r\n\r\n" not in got:
                    got += sock.recv(4096)
                head, _, first = bytes(got).partition(b"\r\n\r\n")
                body = bytearray(first)
                while len(body) < len(data):
                    chunk = sock.recv(4096)
                    assert chunk, "the gateway cut the body short"
                    body += chunk
                    if len(body) % (64 * 4096) < 4096:
                        time.sleep(0.01)  # let the gateway find the socket full
            assert head.startswith(b"HTTP/1.1 200") and body == data
            assert node.stats()["bytes_from_origin"] == 100 * SMALL_BLOCK - 123  # 40 + 60 cold

            s3 = client(f"http://{address[0]}:{address[1]}",
                        signature_version=botocore.UNSIGNED)
            assert s3.get_object(Bucket="web", Key="x.bin")["Body"].read() == data  # warm fds
            before = _open_fds()
            for _ in range(3):
                with _raw_get(address, "/web/x.bin", 4096) as sock:
                    sock.recv(65536)
            deadline = time.monotonic() + 20
            while _open_fds() > before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _open_fds() <= before
            part = s3.get_object(Bucket="web", Key="x.bin", Range="bytes=100000-7500000")
            assert part["Body"].read() == data[100000:7500001]
        finally:
            server.close()
            node.close()
