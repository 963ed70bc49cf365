"""The network-namespace lab: reachability (TCP, multicast), MTU, tbf caps, partitions, teardown,
stale cleanup, and the UDP delay relay (in a thread on loopback and inside a namespace)."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time

import pytest

from meshcache.lab.netns import Host, Lab, UdpDelayRelay, cleanup_stale
from tests.lab_fixtures import lab, lab3, needs_lab  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(60)

ECHO_TCP = """
import socket
s = socket.create_server(("0.0.0.0", 7000))
print("ready", flush=True)
while True:
    c, (peer, _) = s.accept()
    with c:
        c.sendall(c.recv(1024) + b"|" + peer.encode())
"""

TCP_CLIENT = """
import socket, sys
for target in sys.argv[1:]:
    with socket.create_connection((target, 7000), timeout=5) as c:
        c.sendall(b"hello")
        c.shutdown(socket.SHUT_WR)
        print(target, c.recv(1024).decode(), flush=True)
"""

MCAST_RECV = """
import socket, struct, sys
group, port, local, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(local)))
s.settimeout(timeout)
print("ready", flush=True)
try:
    data, (peer, _) = s.recvfrom(65535)
    print(data.decode(), peer, flush=True)
except socket.timeout:
    print("nothing", flush=True)
"""

MCAST_SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for _ in range(3):
    s.sendto(b"announce", (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.05)
"""

UDP_LISTEN = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(0.05)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        data, (peer, _) = s.recvfrom(65535)
    except socket.timeout:
        continue
    print(len(data), peer, flush=True)
"""

DF_SEND = """
import socket, sys
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
target = (sys.argv[1], int(sys.argv[2]))
s.sendto(b"x" * 8000, target)
try:
    s.sendto(b"x" * (9000 - 28 + 1), target)
    print("sent-oversize")
except OSError as e:
    print("oversize-refused", e.errno)
"""

SINK = """
import socket, time
s = socket.create_server(("0.0.0.0", 7001))
print("ready", flush=True)
c, _ = s.accept()
total, first, first_len, last = 0, None, 0, None
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    last = time.monotonic()
    if first is None:
        first, first_len = last, len(b)
    total += len(b)
print(total, (total - first_len) * 8 / (last - first), flush=True)
"""

BLAST = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 7001), timeout=5)
buf = b"\\0" * (1 << 20)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    c.sendall(buf)
c.close()
"""

UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data, peer)
"""

UDP_PING = """
import socket, statistics, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
target = (sys.argv[1], int(sys.argv[2]))
rtts = []
for i in range(int(sys.argv[3])):
    t = time.monotonic()
    s.sendto(str(i).encode(), target)
    while s.recv(100) != str(i).encode():
        pass
    rtts.append(time.monotonic() - t)
print(statistics.median(rtts), flush=True)
"""


def start_ready(host: Host, code: str, *args: object) -> subprocess.Popen:
    """Start a helper script in host and wait for its `ready` line."""
    proc = host.python([*["-c", code], *map(str, args)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line == "ready", f"{host}: helper did not start: {line!r}"
    return proc


def lines(proc: subprocess.Popen, timeout: float = 15) -> list[str]:
    """All stdout lines of a helper that is about to exit."""
    out, _ = proc.communicate(timeout=timeout)
    return out.split("\n")[:-1]


# --------------------------------------------------------------------------- reachability

def test_hosts_reach_each_other_over_tcp(lab3: Lab) -> None:
    for h in lab3:
        start_ready(h, ECHO_TCP)
    clients = {h: h.python(["-c", TCP_CLIENT, *(o.address for o in lab3 if o is not h)],
                           stdout=subprocess.PIPE, text=True) for h in lab3}
    for h, proc in clients.items():
        replies = dict(line.split(" ", 1) for line in lines(proc))
        assert replies == {o.address: f"hello|{h.address}" for o in lab3 if o is not h}
        assert proc.returncode == 0


def test_root_namespace_reaches_hosts_via_gateway(lab3: Lab) -> None:
    start_ready(lab3[0], ECHO_TCP)
    with socket.create_connection((lab3[0].address, 7000), timeout=5) as c:
        c.sendall(b"root")
        c.shutdown(socket.SHUT_WR)
        assert c.recv(1024) == f"root|{lab3.gateway}".encode()


def test_multicast_reaches_every_other_host(lab3: Lab) -> None:
    group, port = "224.0.0.251", 5353          # the mDNS group and port: free in fresh namespaces
    receivers = [start_ready(h, MCAST_RECV, group, port, h.address, 10) for h in lab3.hosts[1:]]
    lab3[0].python_output(["-c", MCAST_SEND, group, port])
    for proc in receivers:
        assert lines(proc) == [f"announce {lab3[0].address}"]


def test_mtu_is_9000_end_to_end(lab3: Lab) -> None:
    for h in lab3:
        link = json.loads(h.check_output(["ip", "-j", "link", "show", "eth0"]))[0]
        assert link["mtu"] == 9000
    root = {e["ifname"]: e["mtu"] for e in json.loads(subprocess.check_output(
        ["ip", "-j", "link", "show"], text=True))}
    assert root[lab3.bridge] == 9000 and all(root[h.veth] == 9000 for h in lab3)
    rx = start_ready(lab3[1], UDP_LISTEN, 7002, 1.0)
    out = lab3[0].python_output(["-c", DF_SEND, lab3[1].address, 7002])
    assert out.split()[0] == "oversize-refused"         # DF really set: 8973 bytes do not fit
    assert lines(rx) == [f"8000 {lab3[0].address}"]     # 8000 bytes with DF arrive whole


# --------------------------------------------------------------------------- shaping and partitions

def measure_mbit(lab: Lab, src: Host, dst: Host, seconds: float) -> float:
    """Goodput of one TCP bulk transfer src -> dst, as the receiver sees it, in bit/s."""
    sink = start_ready(dst, SINK)
    src.python_output(["-c", BLAST, dst.address, seconds], timeout=seconds + 20)
    total, rate = lines(sink)[0].split()
    assert int(total) > 0
    return float(rate)


def test_cap_egress_limits_tcp_to_the_rate(lab3: Lab) -> None:
    cap = 50e6
    lab3.cap_egress(lab3[0], cap)
    qdisc = lab3[0].check_output(["tc", "qdisc", "show", "dev", "eth0"])
    assert "tbf" in qdisc
    rate = measure_mbit(lab3, lab3[0], lab3[1], 2.0)
    print(f"capped at {cap / 1e6:.0f} Mbit/s: measured {rate / 1e6:.2f} Mbit/s "
          f"({rate / cap:.3f} of the cap)")
    assert abs(rate - cap) / cap < 0.10
    lab3.uncap(lab3[0])
    assert "tbf" not in lab3[0].check_output(["tc", "qdisc", "show", "dev", "eth0"])
    fast = measure_mbit(lab3, lab3[0], lab3[1], 0.5)
    print(f"uncapped: {fast / 1e6:.0f} Mbit/s")
    assert fast > 3 * cap


def test_cap_ingress_limits_what_a_host_receives(lab3: Lab) -> None:
    cap = 40e6
    lab3.cap_ingress(lab3[1], cap)
    rate = measure_mbit(lab3, lab3[0], lab3[1], 1.0)
    print(f"ingress cap {cap / 1e6:.0f} Mbit/s: measured {rate / 1e6:.2f} Mbit/s")
    assert abs(rate - cap) / cap < 0.10


def received_from(lab: Lab, sender: Host, receivers: list[Host]) -> dict[Host, bool]:
    """Which receivers get any of a few UDP datagrams sender sends them."""
    procs = {r: start_ready(r, UDP_LISTEN, 7003, 0.5) for r in receivers}
    sender.python_output(["-c", "import socket, sys, time\n"
                          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                          "for _ in range(3):\n"
                          "    [s.sendto(b'p', (a, 7003)) for a in sys.argv[1:]]\n"
                          "    time.sleep(0.05)\n", *(r.address for r in receivers)])
    return {r: any(line.endswith(sender.address) for line in lines(p)) for r, p in procs.items()}


def test_block_and_unblock_a_pair(lab3: Lab) -> None:
    h0, h1, h2 = lab3.hosts
    lab3.block(h0, h1)
    assert received_from(lab3, h0, [h1, h2]) == {h1: False, h2: True}
    assert received_from(lab3, h1, [h0, h2]) == {h0: False, h2: True}
    group, port = "224.0.0.251", 5353                   # multicast from h0 is blocked too
    receivers = [start_ready(h, MCAST_RECV, group, port, h.address, 0.5) for h in (h1, h2)]
    h0.python_output(["-c", MCAST_SEND, group, port])
    assert [lines(p) for p in receivers] == [["nothing"], [f"announce {h0.address}"]]
    lab3.heal()
    assert received_from(lab3, h0, [h1, h2]) == {h1: True, h2: True}


# --------------------------------------------------------------------------- teardown

def lab_leftovers(prefix: str) -> list[str]:
    """Namespaces and root links whose names start with prefix."""
    names = subprocess.check_output(["ip", "netns", "list"], text=True).split()
    links = [e["ifname"] for e in json.loads(subprocess.check_output(
        ["ip", "-j", "link", "show"], text=True))]
    return [n for n in names + links if n.startswith(prefix)]


def test_close_removes_everything_and_is_idempotent(needs_lab: None) -> None:
    one = Lab(2, origin=True)
    try:
        sleeper = one[0].run(["sleep", "60"])
        assert len(lab_leftovers(one.prefix)) == 3 + 3 + 1   # 3 namespaces, 3 veths, the bridge
    finally:
        one.close()
    assert sleeper.poll() is not None
    assert lab_leftovers(one.prefix) == []
    one.close()


def test_cleanup_stale_removes_a_crashed_lab(needs_lab: None) -> None:
    code = ("from meshcache.lab.netns import Lab; import time\n"
            "lab = Lab(2); lab[0].run(['sleep', '60']); print(lab.prefix, flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=Host.python_env())
    prefix = proc.stdout.readline().strip()
    proc.kill()                                            # dies without tearing down
    proc.wait()
    assert len(lab_leftovers(prefix)) == 5
    assert cleanup_stale(prefix) == [prefix]
    assert lab_leftovers(prefix) == []


def test_live_labs_are_not_stale(lab3: Lab) -> None:
    assert lab3.prefix not in cleanup_stale()
    assert len(lab_leftovers(lab3.prefix)) == 7


# --------------------------------------------------------------------------- UDP delay relay

class EchoServer:
    """A UDP echo server on loopback, in a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
                self.sock.sendto(data, peer)
            except OSError:
                return


def median_rtt(target: tuple[str, int], n: int = 15, size: int = 32) -> float:
    """Median round trip of n UDP echoes of size bytes."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        rtts = []
        for i in range(n):
            payload = i.to_bytes(4, "big") * (size // 4)
            t = time.monotonic()
            s.sendto(payload, target)
            while s.recv(65535) != payload:
                pass
            rtts.append(time.monotonic() - t)
    return statistics.median(rtts)


def test_relay_adds_the_configured_delay() -> None:
    echo = EchoServer()
    direct = median_rtt(echo.address)
    delay = 0.020
    with UdpDelayRelay(("127.0.0.1", 0), echo.address, delay) as relay:
        via = median_rtt(relay.address)
    added = via - direct
    print(f"one-way delay {delay * 1e3:.0f} ms: RTT direct {direct * 1e3:.2f} ms, "
          f"via relay {via * 1e3:.2f} ms, added {added * 1e3:.2f} ms (expect {2 * delay * 1e3:.0f})")
    # the relay never delivers early; a busy 2-core machine adds a few ms to both measurements
    assert via >= 2 * delay and added < 2 * delay + 0.015
    assert relay.forwarded == 2 * 15


def test_relay_paces_to_the_rate() -> None:
    echo = EchoServer()
    rate, size, count = 1e6, 5000, 40                      # 200 kB at 1 MB/s: 0.2 s each way
    with UdpDelayRelay(("127.0.0.1", 0), echo.address, 0.0, rate) as relay, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        t = time.monotonic()
        for i in range(count):
            s.sendto(bytes([i]) * size, relay.address)
        got = [s.recv(65535) for _ in range(count)]
        elapsed = time.monotonic() - t
    assert [g[0] for g in got] == list(range(count))          # in order, none lost
    # Both links pipeline: the last datagram leaves the up link at 0.2 s and needs one more
    # datagram time (5 ms) on the down link.
    expected = size * count / rate + size / rate
    print(f"paced {count} x {size} B at {rate:.0f} B/s: {elapsed * 1e3:.1f} ms "
          f"(expect {expected * 1e3:.1f})")
    assert expected * 0.97 <= elapsed < expected * 1.10


def test_relay_drops_when_the_queue_is_full() -> None:
    echo = EchoServer()
    with UdpDelayRelay(("127.0.0.1", 0), echo.address, 0.0, 1e5, max_queue_s=0.05) as relay, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(40):                                    # 40 kB: 0.4 s at 100 kB/s
            s.sendto(b"x" * 1000, relay.address)
        time.sleep(0.3)
    assert 30 <= relay.dropped <= 36                           # ~6 fit in 50 ms of queue


def test_relay_inside_a_namespace_delays_between_hosts(lab3: Lab) -> None:
    h0, h1, h2 = lab3.hosts
    start_ready(h2, UDP_ECHO, 7004)
    direct = float(h0.python_output(["-c", UDP_PING, h2.address, 7004, 10]))
    delay = 0.015
    _, (addr, port) = h1.udp_relay((h1.address, 0), (h2.address, 7004), delay)
    via = float(h0.python_output(["-c", UDP_PING, addr, port, 10]))
    added = via - direct
    print(f"h0 -> relay in h1 -> h2: added {added * 1e3:.2f} ms (expect {2 * delay * 1e3:.0f})")
    # the relay never delivers early; a busy 2-core machine adds a few ms to both measurements
    assert via >= 2 * delay and added < 2 * delay + 0.015


def test_meshcache_lab_up_mesh_serves_reads_through_daemons(needs_lab: None, tmp_path) -> None:
    """`meshcache lab up 2 --mesh --serve DIR`: a meshcached on each host, an HTTP origin; a read
    on one host and then the other crosses the origin once; `down` removes the lab and its
    files."""
    import os
    import random
    import shutil

    data = random.Random(7).randbytes(3 << 20)
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "obj.bin").write_bytes(data)
    exe = shutil.which("meshcache", path=os.path.dirname(sys.executable))

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              check=True).stdout

    built = json.loads(run(exe, "lab", "up", "2", "--mesh", "--serve", str(tmp_path / "srv"),
                           "--json"))
    prefix = built["prefix"]
    try:
        url = built["origin_url"] + "obj.bin"
        got = {}
        for h in built["hosts"]:
            cache = built["nodes"][h["name"]]["cache_dir"]
            out = tmp_path / h["name"]
            run("ip", "netns", "exec", h["name"], exe, "--cache-dir", cache, "get", url,
                "-o", str(out))
            assert out.read_bytes() == data
            got[h["name"]] = json.loads(run("ip", "netns", "exec", h["name"], exe, "--cache-dir",
                                            cache, "stats", "--json"))
        assert sum(s["bytes_from_origin"] for s in got.values()) == len(data)
        assert sum(s["bytes_from_peers"] for s in got.values()) >= len(data)
    finally:
        gone = json.loads(run(exe, "lab", "down", prefix, "--json"))
    assert gone["destroyed"] == [prefix]
    assert lab_leftovers(prefix) == [] and not os.path.exists(built["data_dir"])
