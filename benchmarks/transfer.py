"""Peer transfer throughput: 8 MiB blocks from process A to process B over loopback.

A (server) serves blocks read from files in a temp dir; B (client) asks for them by name,
hashes each with BLAKE3 as it arrives, writes it to its own temp dir and checks the digest.
Three transports, the same event loop (uvloop where installed), the same request protocol
(a 4-byte length + name, answered by an 8-byte size + the bytes), `--concurrency` requests
in flight:

  quic     meshcache.transport.quic: one connection, one stream per request
  tls_tcp  TLS 1.3 over TCP, asyncio streams, one connection per request slot
  tcp      plain TCP, asyncio streams, one connection per request slot

Prints one JSON object as its last line: <mode>_MBps, ratio_vs_tls (quic / tls_tcp), and CPU
seconds per GiB moved on each end (<mode>_cpu_s_per_GiB_server / _client). In the same run:

  wan_*        the same QUIC and TLS-over-TCP transfer between two network namespaces joined
               by 1500-MTU links (root only; `wan_skipped` says why otherwise), QUIC at the
               MTU's datagram size (1472): wan_quic_MBps, wan_tls_tcp_MBps, wan_ratio_vs_tls,
               wan_quic_cpu_s_per_gib (server, client)
  node_*       the whole product path (meshcached store -> GET_BLOCK -> verify -> Node store):
               node_to_node_MBps, store_write_MBps (blocks written, fsynced and renamed as the
               store does), node_ratio_vs_limit = node / min(tls_tcp, store_write)

  .venv/bin/python benchmarks/transfer.py --quick     # 256 MiB per transport
  .venv/bin/python benchmarks/transfer.py             # 1 GiB per transport
  options for the QUIC tunings: --engine, --datagram-size, --cc, --no-coalesce, --sockbuf,
  --concurrency, --no-batching
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import statistics
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import blake3  # noqa: E402

from _common import GiB, MiB, emit, exit_on_sigterm, log, make_file  # noqa: E402
from meshcache.mesh.auth import new_secret  # noqa: E402
from meshcache.read.loop import new_event_loop  # noqa: E402

STATS = "__stats__"
BLOCK = 8 * MiB
MODES = ("quic", "tls_tcp", "tcp")


# ---- the server (process A) ------------------------------------------------------------------------


def _read_block(directory: str, name: str) -> bytes:
    if "/" in name or name.startswith("."):
        raise ValueError(name)
    with open(os.path.join(directory, name), "rb") as f:
        return f.read()


class Served:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.reset()

    def reset(self) -> None:
        """Start counting CPU time now (after imports and setup)."""
        self.cpu0 = time.process_time()
        self.bytes = 0

    def answer(self, name: str) -> bytes:
        if name == STATS:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            return json.dumps({"cpu": time.process_time() - self.cpu0, "bytes": self.bytes,
                               "user": ru.ru_utime, "sys": ru.ru_stime}).encode()
        data = _read_block(self.directory, name)
        self.bytes += len(data)
        return data


async def serve_quic(args: argparse.Namespace, served: Served) -> None:
    from meshcache.transport.quic import QuicTransport

    async def handler(stream: Any) -> None:  # one stream per request
        name = (await stream.recv_frame()).decode()
        data = served.answer(name)
        await stream.send_payload(len(data).to_bytes(8, "big"))
        await stream.send_payload(data, end=True)

    t = QuicTransport(quic_config(args))
    addr = await t.listen((args.host, 0), handler)
    served.reset()
    print(addr[1], flush=True)
    await asyncio.Event().wait()


async def serve_tcp(args: argparse.Namespace, served: Served, use_tls: bool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(4)
                name = (await reader.readexactly(int.from_bytes(header, "big"))).decode()
                data = served.answer(name)
                writer.write(len(data).to_bytes(8, "big"))
                writer.write(data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    ctx = None
    if use_tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(args.cert, args.key)
    server = await asyncio.start_server(handler, args.host, 0, ssl=ctx, limit=1 << 20)
    served.reset()
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


# ---- the client (process B) ------------------------------------------------------------------------


class Sink:
    """Hash a block as it arrives, write it to a file, check the digest."""

    def __init__(self, directory: str, digests: dict[str, str]) -> None:
        self.directory = directory
        self.digests = digests
        self.bytes = 0

    def open(self, name: str) -> tuple[Any, Any]:
        return blake3.blake3(), open(os.path.join(self.directory, name), "wb", buffering=0)

    def done(self, name: str, h: Any, f: Any, size: int) -> None:
        f.close()
        os.unlink(os.path.join(self.directory, name))
        if h.hexdigest() != self.digests[name]:
            raise SystemExit(f"block {name}: digest mismatch")
        self.bytes += size


async def client_quic(args: argparse.Namespace, names: list[str], sink: Sink) -> dict[str, Any]:
    from meshcache.transport.quic import QuicTransport

    t = QuicTransport(quic_config(args))
    conn = await t.connect((args.host, args.port))
    queue = list(reversed(names))

    async def worker() -> None:
        while queue:
            name = queue.pop()
            stream = await conn.open_stream()  # one stream per request
            await stream.send_frame(name.encode())
            await stream.finish()
            size = int.from_bytes(await stream.recv_exactly(8), "big")
            h, f = sink.open(name)
            async for chunk in stream.recv_payload(size):
                h.update(chunk)
                f.write(chunk)
            await stream.recv_eof()
            await stream.aclose()
            sink.done(name, h, f, size)

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    stream = await conn.open_stream()
    await stream.send_frame(STATS.encode())
    size = int.from_bytes(await stream.recv_exactly(8), "big")
    stats = json.loads(await stream.recv_exactly(size))
    await t.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "client_cpu": cpu, "server_cpu": stats["cpu"],
            "server_user_sys": [stats["user"], stats["sys"]],
            "client_user_sys": [ru.ru_utime, ru.ru_stime]}


async def client_tcp(args: argparse.Namespace, names: list[str], sink: Sink,
                     use_tls: bool) -> dict[str, Any]:
    ctx = None
    if use_tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    queue = list(reversed(names))

    async def request(reader: Any, writer: Any, name: str) -> int:
        writer.write(len(name).to_bytes(4, "big") + name.encode())
        return int.from_bytes(await reader.readexactly(8), "big")

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(args.host, args.port, ssl=ctx,
                                                       limit=1 << 20)
        while queue:
            name = queue.pop()
            size = await request(reader, writer, name)
            h, f = sink.open(name)
            left = size
            while left:
                chunk = await reader.read(min(left, 1 << 20))
                if not chunk:
                    raise SystemExit("connection closed early")
                h.update(chunk)
                f.write(chunk)
                left -= len(chunk)
            sink.done(name, h, f, size)
        writer.close()

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    reader, writer = await asyncio.open_connection(args.host, args.port, ssl=ctx)
    size = await request(reader, writer, STATS)
    stats = json.loads(await reader.readexactly(size))
    writer.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "client_cpu": cpu, "server_cpu": stats["cpu"],
            "server_user_sys": [stats["user"], stats["sys"]],
            "client_user_sys": [ru.ru_utime, ru.ru_stime]}


def quic_config(args: argparse.Namespace) -> Any:
    from meshcache.transport import TransportConfig

    return TransportConfig(max_datagram_size=args.datagram_size, congestion_control=args.cc,
                           coalesce_transmit=not args.no_coalesce, socket_buffer=args.sockbuf,
                           max_congestion_window=args.max_cwnd, quic_engine=args.engine,
                           udp_batching=not args.no_batching,
                           recv_timeout=30, send_timeout=30)


# ---- the parent ------------------------------------------------------------------------------------


def run_child(args: argparse.Namespace) -> None:
    if args.mode == "quic":
        import meshcache.transport.quic  # noqa: F401  (imports before the gc freeze)
        from meshcache.transport import engine

        engine.load(args.engine)
    if not os.environ.get("TRANSFER_NO_GC_FREEZE"):
        # Long-running daemons freeze what startup allocated: a full collection then skips it.
        gc.collect()
        gc.freeze()
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    if args.role == "server":
        served = Served(args.dir)
        coro = (serve_quic(args, served) if args.mode == "quic"
                else serve_tcp(args, served, args.mode == "tls_tcp"))
        try:
            loop.run_until_complete(coro)
        except KeyboardInterrupt:
            pass
        return
    with open(args.manifest) as f:
        digests = json.load(f)
    names = sorted(digests) * args.repeat
    sink = Sink(args.dir, digests)
    coro = (client_quic(args, names, sink) if args.mode == "quic"
            else client_tcp(args, names, sink, args.mode == "tls_tcp"))
    result = loop.run_until_complete(coro)
    result["bytes"] = sink.bytes
    print(json.dumps(result), flush=True)


def measure(args: argparse.Namespace, mode: str, work: str, manifest: str,
            lab: Any = None, datagram_size: int = 0) -> dict[str, Any]:
    """One transfer of `mode`; on loopback, or from lab host 0 to lab host 1 when `lab`."""
    host = lab[0].address if lab is not None else "127.0.0.1"
    me = [os.path.abspath(__file__), "--mode", mode,
          "--datagram-size", str(datagram_size or args.datagram_size), "--cc", args.cc,
          "--sockbuf", str(args.sockbuf), "--concurrency", str(args.concurrency),
          "--max-cwnd", str(args.max_cwnd), "--engine", args.engine, "--host", host,
          "--cert", os.path.join(work, "cert.pem"), "--key", os.path.join(work, "key.pem")]
    if args.no_coalesce:
        me.append("--no-coalesce")
    if args.no_batching:
        me.append("--no-batching")
    server_argv = me + ["--role", "server", "--dir", os.path.join(work, "blocks")]
    if lab is not None:
        server = lab[0].python(server_argv, stdout=subprocess.PIPE, text=True)
    else:
        server = subprocess.Popen([sys.executable, *server_argv], stdout=subprocess.PIPE,
                                  text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        out_dir = tempfile.mkdtemp(dir=work, prefix="out-")
        client_argv = me + ["--role", "client", "--port", str(port), "--dir", out_dir,
                            "--manifest", manifest, "--repeat", str(args.repeat)]
        if lab is not None:
            client_argv = lab[1].argv([sys.executable, *client_argv])
            env = lab[1].python_env()
        else:
            client_argv = [sys.executable, *client_argv]
            env = None
        client = subprocess.run(client_argv, stdout=subprocess.PIPE, text=True, timeout=600,
                                env=env)
        if client.returncode != 0:
            raise SystemExit(f"{mode} client failed ({client.returncode})")
        return json.loads(client.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(10)


def figures(r: dict[str, Any], label: str) -> dict[str, float]:
    """MB/s and CPU seconds per GiB on each end of one measured transfer (and log them)."""
    gib = r["bytes"] / GiB
    out = {"MBps": r["bytes"] / r["seconds"] / 1e6, "server": r["server_cpu"] / gib,
           "client": r["client_cpu"] / gib}
    log(f"{label:12s} {out['MBps']:7.1f} MB/s  cpu s/GiB server {out['server']:.2f} "
        f"client {out['client']:.2f}")
    return out


def quic_engine_name(name: str) -> str:
    from meshcache.transport import engine

    e = engine.load(name)
    return f"{e.name} {e.version}"


def measure_wan(args: argparse.Namespace, work: str, names: list[str], digests: dict[str, str],
                size: int) -> dict[str, Any]:
    """QUIC (at the MTU's datagram size) and TLS over TCP between two network namespaces joined
    by 1500-MTU links: what a real WAN path's packet size costs."""
    from meshcache.lab.netns import Lab, LabError, requires_root

    reason = requires_root()
    if reason:
        return {"wan_skipped": reason}
    subset = names[:max(1, size // BLOCK)]
    manifest = os.path.join(work, "wan-manifest.json")
    with open(manifest, "w") as f:
        json.dump({n: digests[n] for n in subset}, f)
    saved, args.repeat = args.repeat, 1
    out: dict[str, Any] = {}
    try:
        with Lab(2, mtu=1500) as lab:
            runs: dict[str, list[dict[str, float]]] = {"quic": [], "tls_tcp": []}
            for _ in range(max(1, args.rounds - 1)):
                for mode in runs:
                    r = measure(args, mode, work, manifest, lab=lab, datagram_size=1472)
                    runs[mode].append(figures(r, f"wan {mode}"))
            out["wan_mtu"] = 1500
            out["wan_bytes"] = len(subset) * BLOCK
            out["wan_quic_MBps"] = statistics.median(x["MBps"] for x in runs["quic"])
            out["wan_tls_tcp_MBps"] = statistics.median(x["MBps"] for x in runs["tls_tcp"])
            out["wan_ratio_vs_tls"] = out["wan_quic_MBps"] / out["wan_tls_tcp_MBps"]
            out["wan_quic_cpu_s_per_gib"] = {
                end: statistics.median(x[end] for x in runs["quic"])
                for end in ("server", "client")}
            # what the ratio would be where each side had its cores to itself (CPU-bound)
            quic_cpu = max(out["wan_quic_cpu_s_per_gib"].values())
            tls_cpu = max(statistics.median(x[end] for x in runs["tls_tcp"])
                          for end in ("server", "client"))
            out["wan_cpu_ratio_vs_tls"] = tls_cpu / quic_cpu
    except LabError as e:
        out = {"wan_skipped": str(e)}
    finally:
        args.repeat = saved
    return out


def measure_store_write(work: str, size: int) -> float:
    """The store's own write rate: 8 MiB blocks written, fsynced and renamed by BlockStore.put
    (each a distinct block). MB/s."""
    from meshcache.read.store import BlockStore

    root = os.path.join(work, "store-write")
    store = BlockStore(root, capacity=2 * size + BLOCK, fsync=True)
    base = os.urandom(BLOCK)
    n = max(1, size // BLOCK)
    t = time.perf_counter()
    for i in range(n):
        store.put(i.to_bytes(8, "big") + base[8:])
    seconds = time.perf_counter() - t
    shutil.rmtree(root, ignore_errors=True)
    return n * BLOCK / seconds / 1e6


def measure_nodes(work: str, size: int, datagram_size: int, engine: str = "auto") -> float:
    """The whole product path: a `meshcached` serving its store, a Node in this process reading
    an object through the mesh (GET_BLOCK, rate limiter, BLAKE3 check, store put). MB/s."""
    from meshcache import Config, Node
    from meshcache.lab.httporigin import OriginServer

    secret = new_secret()
    with OriginServer(directory=work) as srv:
        make_file(os.path.join(work, "object.bin"), size, seed=99)
        url = srv.url_for("object.bin")
        a_dir = os.path.join(work, "node-a")
        seed = Node(Config.local(cache_dir=a_dir, fsync=False))
        seed.prewarm(url)
        seed.close()
        env = dict(os.environ, MESHCACHE_CLUSTER_SECRET=secret, MESHCACHE_CACHE_DIR=a_dir,
                   MESHCACHE_LISTEN="127.0.0.1:0", MESHCACHE_QUIC_ENGINE=engine,
                   MESHCACHE_MAX_DATAGRAM_SIZE=str(datagram_size))
        proc = subprocess.Popen([sys.executable, "-m", "meshcache.daemon"], env=env,
                                stdout=subprocess.PIPE, text=True)
        try:
            addr = json.loads(proc.stdout.readline())["address"]
            node = Node(Config.local(cache_dir=os.path.join(work, "node-b"), fsync=True,
                                     cluster_secret=secret, listen="127.0.0.1:0", peers=[addr],
                                     max_datagram_size=datagram_size, quic_engine=engine))
            buf = bytearray(4 * MiB)
            t = time.perf_counter()
            with node.open(url) as f:
                while f.readinto(buf):
                    pass
                assert f.stats["bytes_from_peers"] == size, f.stats
            seconds = time.perf_counter() - t
            node.close()
        finally:
            proc.terminate()
            proc.wait(10)
    return size / seconds / 1e6


def main() -> None:
    exit_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="256 MiB per transport (< 2 minutes)")
    p.add_argument("--size", type=int, default=0, help="bytes per transport (default 1 GiB)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--rounds", type=int, default=3,
                   help="runs per transport, interleaved; the median is reported")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--datagram-size", type=int, default=65000, help="QUIC max_datagram_size")
    p.add_argument("--cc", default="reno", help="QUIC congestion control (reno, cubic)")
    p.add_argument("--no-coalesce", action="store_true", help="QUIC: transmit after each event")
    p.add_argument("--sockbuf", type=int, default=4 * MiB, help="QUIC SO_RCVBUF/SO_SNDBUF")
    p.add_argument("--max-cwnd", type=int, default=4 * MiB, help="QUIC congestion window cap")
    p.add_argument("--engine", default="auto", help="QUIC engine: auto, qh3, aioquic")
    p.add_argument("--no-batching", action="store_true", help="QUIC: one sendto per datagram")
    p.add_argument("--no-wan", action="store_true",
                   help="skip the two-namespace 1500-MTU measurement")
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    # child processes
    p.add_argument("--no-nodes", action="store_true",
                   help="skip the meshcached -> Node measurement of the whole product path")
    p.add_argument("--role", choices=("server", "client"), help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--manifest", help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--cert", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role:
        run_child(args)
        return

    total = args.size or (256 * MiB if args.quick else 1 * GiB)
    nblocks = max(1, total // BLOCK)
    distinct = min(nblocks, 32)  # 256 MiB of distinct files, re-read for larger totals
    args.repeat = max(1, nblocks // distinct)
    moved = distinct * args.repeat * BLOCK
    work = tempfile.mkdtemp(prefix="meshcache-transfer-")
    try:
        from meshcache.transport.identity import create_identity

        cert, key, _ = create_identity()
        with open(os.path.join(work, "cert.pem"), "wb") as f:
            f.write(cert)
        with open(os.path.join(work, "key.pem"), "wb") as f:
            f.write(key)
        blocks = os.path.join(work, "blocks")
        os.mkdir(blocks)
        digests = {}
        for i in range(distinct):
            name = f"block-{i:04d}"
            make_file(os.path.join(blocks, name), BLOCK, seed=i)
            with open(os.path.join(blocks, name), "rb") as f:
                digests[name] = blake3.blake3(f.read()).hexdigest()
        manifest = os.path.join(work, "manifest.json")
        with open(manifest, "w") as f:
            json.dump(digests, f)

        result: dict[str, Any] = {"bytes_per_transport": moved, "block_size": BLOCK,
                                  "concurrency": args.concurrency,
                                  "quic_max_datagram_size": args.datagram_size,
                                  "quic_cc": args.cc, "quic_coalesce": not args.no_coalesce,
                                  "quic_sockbuf": args.sockbuf, "quic_max_cwnd": args.max_cwnd,
                                  "quic_engine": quic_engine_name(args.engine),
                                  "quic_udp_batching": not args.no_batching,
                                  "machine_note": "shared, loaded 2-core machine"}
        modes = args.modes.split(",")
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for mode in modes:
                r = measure(args, mode, work, manifest)
                assert r["bytes"] == moved, (r["bytes"], moved)
                runs[mode].append(figures(r, mode))
        result["rounds"] = args.rounds
        for mode in modes:
            result[f"{mode}_MBps"] = statistics.median(x["MBps"] for x in runs[mode])
            result[f"{mode}_cpu_s_per_GiB_server"] = statistics.median(
                x["server"] for x in runs[mode])
            result[f"{mode}_cpu_s_per_GiB_client"] = statistics.median(
                x["client"] for x in runs[mode])
        if "quic_MBps" in result and "tls_tcp_MBps" in result:
            result["ratio_vs_tls"] = result["quic_MBps"] / result["tls_tcp_MBps"]
        if not args.no_wan:
            result.update(measure_wan(args, work, sorted(digests), digests,
                                      64 * MiB if args.quick else 256 * MiB))
        if not args.no_nodes:
            node_bytes = min(moved, 128 * MiB if args.quick else 256 * MiB)
            result["store_write_MBps"] = measure_store_write(work, node_bytes)
            log(f"store    {result['store_write_MBps']:7.1f} MB/s (write, fsync, rename)")
            result["node_to_node_MBps"] = measure_nodes(work, node_bytes, args.datagram_size,
                                                        args.engine)
            log(f"nodes    {result['node_to_node_MBps']:7.1f} MB/s (meshcached store -> "
                "Node store, verified)")
            if "tls_tcp_MBps" in result:
                result["node_ratio_vs_tls"] = result["node_to_node_MBps"] / result["tls_tcp_MBps"]
                limit = min(result["tls_tcp_MBps"], result["store_write_MBps"])
                result["node_ratio_vs_limit"] = result["node_to_node_MBps"] / limit
        emit(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
