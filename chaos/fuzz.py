"""Fuzz every decoder of outside bytes: the wire codec, the local API's requests, Bloom
summaries and deltas, manifests, auth handshake frames and mDNS ads, each with >= 1,000,000
mutated inputs (seeds: valid encodings). Counts crashes (any exception but the decoder's own
error), hangs (one input > 1 s) and the peak RSS. Coverage-guided with atheris when it is
installed (`pip install atheris`), else random mutation."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import cbor2
from _common import MiB, emit, log, peak_rss

try:
    import atheris
except ImportError:
    atheris = None

if atheris is not None and "--child" in sys.argv:
    with atheris.instrument_imports(include=["meshcache"]):
        from meshcache.core import wire
        from meshcache.core.bloom import BloomError, BloomFilter
        from meshcache.core.manifest import Manifest, ManifestError
        from meshcache.core.version import ObjectVersion
        from meshcache.mesh import auth
        from meshcache.mesh.discovery import AdError, parse_ad
        from meshcache.host.frames import FrameError, parse_request
else:
    from meshcache.core import wire
    from meshcache.core.bloom import BloomError, BloomFilter
    from meshcache.core.manifest import Manifest, ManifestError
    from meshcache.core.version import ObjectVersion
    from meshcache.mesh import auth
    from meshcache.mesh.discovery import AdError, parse_ad
    from meshcache.host.frames import FrameError, parse_request

HANG_SECONDS = 1.0


def seeds() -> dict[str, list[bytes]]:
    rng = random.Random(1)
    d = [rng.randbytes(32) for _ in range(8)]
    msgs = [wire.Hello(b"node-a", 1 << 22, b"t" * 8, 3, "zone", 7946),
            wire.GetBlock(1, d[0], 5), wire.GetBlock(2, d[1], 4, "http://o/x", 4, "etag:1", 99),
            wire.Block(3, d[2], 65536), wire.Miss(4, d[3]),
            wire.GetManifest(5, "s3://b/k", "etag:x", 123456),
            wire.ManifestMsg(6, 65536, (d[0], None, d[1])),
            wire.GetVersion(10, "s3://b/k"), wire.VersionMsg(11, "etag:x", 123456, 86_399_000),
            wire.Summary(b"node-b", 9, rng.randbytes(100)), wire.Ping(7), wire.Ack(8),
            wire.Error(9, "no"), wire.Leave(b"node-c", 2)]
    f = BloomFilter(1024, 4)
    for x in d:
        f.add(x)
    g = f.copy()
    g.add(rng.randbytes(32))
    m = Manifest(ObjectVersion("http://o/obj", "etag:1", 5 * 65536 + 1), 65536,
                 [d[0], None, d[1], d[2], None, d[3]])
    hs = auth.ClientHandshake(b"k" * 32, b"client", b"b" * 32)
    sv = auth.ServerHandshake(b"k" * 32, b"server", b"b" * 32)
    hello = hs.hello()
    challenge = sv.on_hello(hello)
    return {"wire": [wire.encode(x) for x in msgs],
            "local_api": [cbor2.dumps([1, "stat", "http://o/x", {}]),
                          cbor2.dumps([1, "block", "http://o/x", "etag:1", 99, 0, {}])],
            "bloom": [f.encode(), g.encode()], "bloom_delta": [g.diff(f)],
            "manifest": [m.encode()], "auth": [hello, challenge, hs.on_challenge(challenge)],
            "mdns_ad": [b"id=6e6f6465\x00tag=0102030405060708\x00bs=65536\x00zone=z\x00v=1"]}


def targets() -> dict[str, tuple[Callable[[bytes], Any], tuple[type[BaseException], ...]]]:
    base = BloomFilter(1024, 4)

    def delta(b: bytes) -> None:
        base.copy().apply_delta(b)

    def auth_frames(b: bytes) -> None:
        try:
            auth.ServerHandshake(b"k" * 32, b"s", b"b" * 32).on_hello(b)
        except auth.AuthFailed:
            pass
        c = auth.ClientHandshake(b"k" * 32, b"c", b"b" * 32)
        c.hello()
        c.on_challenge(b)

    def ad(b: bytes) -> None:
        props: dict[bytes, bytes] = {}
        for kv in b.split(b"\x00"):
            k, _, v = kv.partition(b"=")
            props[k] = v
        parse_ad(props, ["127.0.0.1"], 7946)

    return {"wire": (wire.decode, (wire.WireError,)),
            "local_api": (parse_request, (FrameError,)),
            "bloom": (lambda b: BloomFilter.decode(b, max_bytes=1 << 20), (BloomError,)),
            "bloom_delta": (delta, (BloomError,)),
            "manifest": (Manifest.decode, (ManifestError,)),
            "auth": (auth_frames, (auth.AuthFailed,)),
            "mdns_ad": (ad, (AdError,))}


def mutate(rng: random.Random, base: bytes) -> bytes:
    b = bytearray(base)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(7)
        i = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[i] = rng.randrange(256)
        elif op == 1 and b:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 2:
            b[i:i] = rng.randbytes(rng.randint(1, 9))
        elif op == 3 and b:
            del b[i:i + rng.randint(1, 8)]
        elif op == 4:
            del b[i:]
        elif op == 5:
            b[i:i] = b[i:i + rng.randint(1, 16)]
        else:  # interesting integers (CBOR lengths)
            b[i:i] = rng.choice([b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff", b"\x9f", b"\xbf",
                                 b"\x5a\x7f\xff\xff\xff", b"\xff", b"\x00" * 8])
    return bytes(b)


def run_random(n: int) -> dict[str, Any]:
    rng = random.Random(11)
    out: dict[str, Any] = {}
    corpus = seeds()
    for name, (fn, ok) in targets().items():
        crashes = hangs = 0
        slowest = 0.0
        t0 = time.perf_counter()
        for i in range(n):
            data = mutate(rng, rng.choice(corpus[name]))
            t = time.perf_counter()
            try:
                fn(data)
            except ok:
                pass
            except Exception as e:  # a crash: anything but the decoder's own refusal
                crashes += 1
                if crashes <= 3:
                    log(f"{name}: crash {type(e).__name__}: {e} on {data[:64].hex()}")
            dt = time.perf_counter() - t
            slowest = max(slowest, dt)
            hangs += dt > HANG_SECONDS
        out[name] = {"inputs": n, "crashes": crashes, "hangs": hangs,
                     "slowest_ms": round(slowest * 1000, 1),
                     "seconds": round(time.perf_counter() - t0, 1)}
        log(f"{name}: {out[name]}")
    return out


def child(name: str, n: int, corpus: str) -> None:
    """One target under atheris (libFuzzer): coverage-guided, from the seed corpus."""
    fn, ok = targets()[name]

    def one(data: bytes) -> None:
        try:
            fn(data)
        except ok:
            pass

    atheris.Setup([sys.argv[0], f"-runs={n}", f"-timeout={HANG_SECONDS:g}", "-max_len=4096",
                   "-rss_limit_mb=2048", f"-artifact_prefix={corpus}/", "-print_final_stats=1",
                   corpus], one)
    atheris.Fuzz()


def run_atheris(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, blobs in seeds().items():
        corpus = tempfile.mkdtemp(prefix=f"meshcache-fuzz-{name}-")
        try:
            for i, b in enumerate(blobs):
                with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
                    f.write(b)
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, __file__, "--child", name, str(n), corpus],
                               capture_output=True, text=True)
            err = p.stderr
            runs = re.findall(r"stat::number_of_executed_units:\s+(\d+)", err)
            rss_mb = re.findall(r"stat::peak_rss_mb:\s+(\d+)", err)
            cov = re.findall(r"cov: (\d+)", err)
            crashed = p.returncode != 0
            if crashed:
                log(f"{name}: exit {p.returncode}\n" + err[-3000:])
            out[name] = {"inputs": int(runs[-1]) if runs else 0, "crashes": int(crashed),
                         "hangs": int("timeout" in err.lower() and crashed),
                         "peak_rss_mb": int(rss_mb[-1]) if rss_mb else None,
                         "coverage": int(cov[-1]) if cov else None,
                         "seconds": round(time.perf_counter() - t0, 1)}
            log(f"{name}: {out[name]}")
        finally:
            shutil.rmtree(corpus, ignore_errors=True)
    return out


def main() -> None:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(sys.argv[i + 1], int(sys.argv[i + 2]), sys.argv[i + 3])
        return
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="20,000 inputs per decoder")
    p.add_argument("--inputs", type=int, default=0, help="inputs per decoder (default 1,000,000)")
    p.add_argument("--engine", choices=["atheris", "random"], default="atheris",
                   help="atheris (coverage-guided, when installed) or random mutation")
    args = p.parse_args()
    n = args.inputs or (20_000 if args.quick else 1_000_000)
    if atheris is not None and args.engine == "atheris":
        engine = "atheris (coverage-guided libFuzzer)"
        results = run_atheris(n)
    else:
        engine = "random mutation" + (" (atheris not installed)" if atheris is None else "")
        results = run_random(n)
    crashes = sum(r["crashes"] for r in results.values())
    hangs = sum(r["hangs"] for r in results.values())
    emit({"engine": engine, "decoders": len(results), "inputs_per_decoder": n,
          "inputs_total": sum(r["inputs"] for r in results.values()), "crashes": crashes,
          "hangs": hangs,
          "peak_rss_mb": max(r.get("peak_rss_mb") or peak_rss() / MiB for r in results.values()),
          **{f"{k}_s": r["seconds"] for k, r in results.items()}})
    if crashes or hangs:
        sys.exit(1)


if __name__ == "__main__":
    main()
