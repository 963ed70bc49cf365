"""boto3, unchanged, reading through meshcache's S3-compatible gateway.

The gateway maps bucket "models" to an origin URL prefix (a local directory here; s3://,
https://, any fsspec URL in practice), checks each request's AWS Signature V4 against its
access keys, and serves GetObject / HeadObject / ListObjectsV2 from the cache. Against a running
`meshcached` with `s3_listen` set, pass --endpoint-url and the keys from its config instead.

    python examples/boto3_gateway.py [--endpoint-url URL --access-key K --secret-key S]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile

import boto3


def start_gateway(tmp: str, size: int) -> tuple[object, object, str]:
    """An in-process node + gateway over a generated origin directory."""
    from meshcache import Config, Node
    from meshcache.surfaces.s3gateway import serve

    origin = os.path.join(tmp, "origin", "llm")
    os.makedirs(origin)
    with open(os.path.join(origin, "weights.bin"), "wb") as f:
        f.write(random.Random(0).randbytes(size))
    with open(os.path.join(origin, "config.json"), "w") as f:
        f.write('{"layers": 2}')
    node = Node(Config.local(cache_dir=os.path.join(tmp, "cache"), block_size=1 << 20,
                             fsync=False, s3_buckets={"models": f"file://{tmp}/origin/"},
                             s3_access_keys={"EXAMPLEKEY": "example-secret"}))
    server = serve(node, "127.0.0.1:0")
    host, port = server.address
    return node, server, f"http://{host}:{port}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint-url")
    p.add_argument("--access-key", default="EXAMPLEKEY")
    p.add_argument("--secret-key", default="example-secret")
    p.add_argument("--key", default="llm/weights.bin")
    p.add_argument("--mb", type=int, default=16)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshcache-gateway-") as tmp:
        node = server = None
        endpoint = a.endpoint_url
        if endpoint is None:
            node, server, endpoint = start_gateway(tmp, a.mb << 20)
        try:
            run(endpoint, a.access_key, a.secret_key, a.key, node)
        finally:
            if server is not None:
                server.close()
            if node is not None:
                node.close()


def run(endpoint: str, access_key: str, secret_key: str, key: str, node: object) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=access_key, aws_secret_access_key=secret_key)
    listed = s3.list_objects_v2(Bucket="models", Prefix=key.rsplit("/", 1)[0] + "/")
    print("listing:", [(o["Key"], o["Size"]) for o in listed.get("Contents", [])], flush=True)
    for attempt in ("first", "second"):
        before = node.stats() if node is not None else None
        body = s3.get_object(Bucket="models", Key=key)["Body"].read()
        line = f"{attempt} get_object: {len(body)} bytes"
        if node is not None:
            after = node.stats()
            line += (f"; bytes came from origin "
                     f"{after['bytes_from_origin'] - before['bytes_from_origin']}, "
                     f"local store {after['bytes_from_local'] - before['bytes_from_local']}")
        print(line, flush=True)
    part = s3.get_object(Bucket="models", Key=key, Range="bytes=1000-1999")["Body"].read()
    print(f"ranged get_object: {len(part)} bytes", flush=True)


if __name__ == "__main__":
    main()
