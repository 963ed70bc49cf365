"""The 3-zone lab: zones on their own bridges joined by TUN relays that add 20 ms one way, carry a
1500-byte MTU and are capped with tbf; bytes counted per link; teardown leaves nothing, also after
the building process is killed. Then meshcache across the zones: the zones meet through the DHT
from one bootstrap address, a block crosses into a zone once, a node without the credential learns
no record, a cut-off zone reads its own origin, a killed zone's records expire. Needs root (skips
with the reason otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcache.core.digest import digest
from meshcache.lab.httporigin import make_file
from meshcache.lab.lines import next_json
from meshcache.lab.netns import Host, cleanup_stale, requires_root
from meshcache.lab.zones import ZoneLab
from meshcache.mesh.auth import new_secret
from tests.lab_fixtures import needs_lab  # noqa: F401  (fixture)
from tests.test_lab import BLAST, SINK, UDP_ECHO, UDP_PING, lab_leftovers, lines, start_ready

pytestmark = pytest.mark.timeout(90)

DELAY = 0.020
RATE = 24e6                  # bits/s on each WAN link

DF_PROBE = """
import errno, socket, sys
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
target = (sys.argv[1], int(sys.argv[2]))
for size in map(int, sys.argv[3:]):
    try:
        s.sendto(b"x" * size, target)
        print("sent", size, flush=True)
    except OSError as e:
        print("refused", size, e.errno == errno.EMSGSIZE, flush=True)
"""

UDP_COUNT = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
sizes = []
try:
    while True:
        sizes.append(len(s.recv(65535)))
except socket.timeout:
    pass
print(" ".join(map(str, sizes)), flush=True)
"""


@pytest.fixture(scope="module")
def zlab() -> Iterator[ZoneLab]:
    """One 3x3 lab for the module (building one takes a few seconds), WAN links capped."""
    reason = requires_root()
    if reason:
        pytest.skip(reason)
    cleanup_stale()
    lab = ZoneLab(3, 3, wan_delay=DELAY, wan_rate=RATE)
    try:
        yield lab
    finally:
        lab.close()


def udp_rtt(src: Host, dst: Host, port: int, n: int = 10) -> float:
    """Median UDP echo round trip src -> dst (the echo server must run on dst:port)."""
    return float(src.python_output(["-c", UDP_PING, dst.address, port, n]))


def test_rtt_is_40ms_across_zones_and_small_inside_one(zlab: ZoneLab) -> None:
    a, b, c = (zlab.zones[z] for z in "abc")
    for dst in (a[1], b[0], c[2]):
        start_ready(dst, UDP_ECHO, 7100)
    inside = udp_rtt(a[0], a[1], 7100)
    ab, ac = udp_rtt(a[0], b[0], 7100), udp_rtt(a[0], c[2], 7100)
    bc = udp_rtt(b[1], c[2], 7100)
    print(f"RTT inside a {inside * 1e3:.2f} ms, a-b {ab * 1e3:.2f}, a-c {ac * 1e3:.2f}, "
          f"b-c {bc * 1e3:.2f} ms")
    assert inside < 0.005
    for rtt in (ab, ac, bc):
        assert 2 * DELAY <= rtt < 2 * DELAY + 0.015


def test_wan_path_mtu_is_1500_and_the_zone_lan_9000(zlab: ZoneLab) -> None:
    a0, a1, b0 = zlab.zones["a"][0], zlab.zones["a"][1], zlab.zones["b"][0]
    rx_b = start_ready(b0, UDP_COUNT, 7101, 1.5)
    rx_a = start_ready(a1, UDP_COUNT, 7101, 1.5)
    # 1472 + 28 header bytes fit a 1500-byte link; 1473 does not: the router answers "fragmentation
    # needed", after which the sender's kernel refuses anything over the path MTU itself.
    out = a0.python_output(["-c", DF_PROBE, b0.address, 7101, 1472, 1473, 1473, 1473])
    assert out.split("\n")[0] == "sent 1472"
    assert "refused 1473 True" in out
    inside = a0.python_output(["-c", DF_PROBE, a1.address, 7101, 8972])
    assert inside.strip() == "sent 8972"
    assert lines(rx_b) == ["1472"]                    # the oversized datagrams never arrived
    assert lines(rx_a) == ["8972"]
    link = json.loads(zlab.routers["a"].check_output(["ip", "-j", "link", "show", "wan-b"]))[0]
    assert link["mtu"] == 1500


def test_relay_counts_the_bytes_of_each_link_and_direction(zlab: ZoneLab) -> None:
    a0, b0, c0 = (zlab.zones[z][0] for z in "abc")
    rx = start_ready(b0, UDP_COUNT, 7102, 1.0)
    before = zlab.wan_bytes()
    a0.python_output(["-c", "import socket, sys\n"
                      "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                      "for _ in range(100): s.sendto(b'x' * 1000, (sys.argv[1], 7102))\n",
                      b0.address])
    assert lines(rx) == [" ".join(["1000"] * 100)]    # 103 kB: within the link's queue
    after = zlab.wan_bytes()
    moved = {k: after[k] - before[k] for k in after}
    assert moved.pop("a>b") == 100 * (1000 + 28)      # payload + UDP and IPv4 headers, exactly
    assert set(moved.values()) == {0}                  # nothing else crossed any link


def test_each_wan_link_is_capped(zlab: ZoneLab) -> None:
    a0, c0 = zlab.zones["a"][0], zlab.zones["c"][0]
    sink = start_ready(c0, SINK)
    a0.python_output(["-c", BLAST, c0.address, 3.0], timeout=30)
    total, rate = lines(sink)[0].split()
    print(f"WAN cap {RATE / 1e6:.0f} Mbit/s: TCP a->c {float(rate) / 1e6:.2f} Mbit/s")
    assert 0.80 * RATE < float(rate) < 1.05 * RATE


def test_a_cut_zone_reaches_the_origin_but_no_other_zone(zlab: ZoneLab) -> None:
    a0, c0 = zlab.zones["a"][0], zlab.zones["c"][0]
    start_ready(zlab.origin, UDP_ECHO, 7103)
    start_ready(a0, UDP_ECHO, 7103)
    zlab.cut("c")
    try:
        with pytest.raises(subprocess.CalledProcessError):   # the echo times out: no reply
            udp_rtt(c0, a0, 7103, n=1)
        assert udp_rtt(c0, zlab.origin, 7103) >= 2 * zlab.origin_delay
    finally:
        zlab.mend()
    assert udp_rtt(c0, a0, 7103) >= 2 * DELAY


# --------------------------------------------------------------------------- teardown

def test_close_leaves_nothing(needs_lab: None) -> None:
    lab = ZoneLab(2, 1)
    try:
        relays = [int(p) for ns in (lab.routers["a"].name, lab.origin.name)
                  for p in subprocess.check_output(["ip", "netns", "pids", ns], text=True).split()]
        assert len(relays) == 3                        # links a-b, origin-a, origin-b
        # namespaces: 2 hosts, 2 routers, the origin; root links: 2 bridges, 4 veth ends
        assert len(lab_leftovers(lab.prefix)) == 5 + 6
    finally:
        lab.close()
    assert lab_leftovers(lab.prefix) == []
    assert not [p for p in relays if _alive(p)]


def test_a_killed_run_is_cleaned_up(needs_lab: None) -> None:
    code = ("from meshcache.lab.zones import ZoneLab; import time\n"
            "lab = ZoneLab(2, 1); print(lab.prefix, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=Host.python_env())
    try:
        prefix = proc.stdout.readline().strip()
        assert prefix and lab_leftovers(prefix)
    finally:
        proc.kill()                                    # dies without tearing down
        proc.wait()
    assert cleanup_stale(prefix) == [prefix]
    assert lab_leftovers(prefix) == []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False



def test_meshcache_lab_up_and_down_from_the_installed_command(needs_lab: None) -> None:
    """`meshcache lab up 4 --zones 2` (run outside the repository, nothing on PYTHONPATH) builds
    zones that talk across their WAN link after the command has exited; `down` removes them."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert "PYTHONPATH" not in Host.python_env(env)     # installed: namespaces need no path

    def meshcache(*args: str) -> str:
        return subprocess.run([shutil.which("meshcache", path=os.path.dirname(sys.executable)),
                               "lab", *args], env=env, cwd="/", capture_output=True, text=True,
                              timeout=60, check=True).stdout

    assert "--zones" in meshcache("up", "--help")
    built = json.loads(meshcache("up", "4", "--zones", "2", "--no-origin", "--json"))
    prefix = built["prefix"]
    try:
        a0, b0 = (f"{prefix}-{z}0" for z in "ab")
        b0_addr = built["zones"]["b"]["hosts"][0]["address"]
        echo = subprocess.Popen(["ip", "netns", "exec", b0, sys.executable, "-c", UDP_ECHO,
                                 "7104"], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert echo.stdout.readline().strip() == "ready"
            rtt = float(subprocess.check_output(["ip", "netns", "exec", a0, sys.executable, "-c",
                                                 UDP_PING, b0_addr, "7104", "3"], text=True))
            assert rtt >= 0.040
        finally:
            echo.kill()
            echo.wait()
    finally:
        gone = json.loads(meshcache("down", prefix, "--json"))
    assert gone["destroyed"] == [prefix]
    assert lab_leftovers(prefix) == []


@pytest.mark.timeout(180)
def test_meshcache_lab_up_zones_mesh_nodes_meet_across_zones(needs_lab: None) -> None:
    """`meshcache lab up 4 --zones 2 --mesh`: each node gets its zone, a DHT endpoint and a
    bootstrap address in the other zone, so `meshcache peers` on a host of each zone shows the
    other zone; `down` removes the lab and its files."""
    exe = shutil.which("meshcache", path=os.path.dirname(sys.executable))

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              check=True).stdout

    built = json.loads(run(exe, "lab", "up", "4", "--zones", "2", "--mesh", "--no-origin",
                           "--json"))
    prefix = built["prefix"]
    try:
        nodes = built["nodes"]
        assert {n["zone"] for n in nodes.values()} == {"a", "b"}

        def peers(host: str, *extra: str) -> str:
            return run("ip", "netns", "exec", host, exe, "--cache-dir",
                       nodes[host]["cache_dir"], "peers", *extra)

        def remote(status: dict, zone: str) -> set[str]:
            return set(status.get("remote_zones") or {}) - {zone}

        began = time.monotonic()
        deadline = began + 60    # daemons join (retries from 1 s); status written every round
        while time.monotonic() < deadline:   # the status files `peers` reads, polled cheaply
            try:
                seen = {h: remote(json.loads((Path(n["cache_dir"]) / "mesh.json").read_text()),
                                  n["zone"]) for h, n in nodes.items()}
            except (OSError, ValueError):
                seen = {}
            if seen and all(seen.values()):
                break
            time.sleep(0.5)
        print(f"every node saw the other zone {time.monotonic() - began:.1f} s after `up`")
        assert all(seen[h] == {"b" if n["zone"] == "a" else "a"} for h, n in nodes.items()), seen
        for h, other in ((f"{prefix}-a0", "b"), (f"{prefix}-b1", "a")):   # what `peers` shows
            assert f"remote zones seen: {other} (" in peers(h)
    finally:
        gone = json.loads(run(exe, "lab", "down", prefix, "--json"))
    assert gone["destroyed"] == [prefix]
    assert lab_leftovers(prefix) == [] and not os.path.exists(built["data_dir"])


# --------------------------------------------------------------------------- zones through the DHT

BLOCK = 256 * 1024
PORT, DHT_PORT = 7946, 7947
SECRET = new_secret()


class Zones:
    """meshnode processes on the hosts of a ZoneLab, all bootstrapping the DHT from a0."""

    def __init__(self, lab: ZoneLab, work, url: str):
        self.lab, self.work, self.url = lab, work, url
        self.procs: list[subprocess.Popen] = []

    def start(self, hosts, go, *, secret: str = SECRET, ttl: float = 3600.0,
              members: int | None = None, peers=None) -> list[subprocess.Popen]:
        bootstrap = f"{self.lab.zones['a'][0].address}:{DHT_PORT}"
        procs = []
        for h in hosts:
            zone = self.lab.zone_of(h)
            args = ["-m", "meshcache.lab.meshnode", "--cache-dir", str(self.work / h.name),
                    "--listen", f"{h.address}:{PORT}", "--secret", secret, "--url", self.url,
                    "--go", str(go), "--block-size", str(BLOCK), "--zone", zone,
                    "--members", str(len(hosts) - 1 if members is None else members),
                    "--preset", "wan",
                    "--set", f"dht_listen={json.dumps(f'{h.address}:{DHT_PORT}')}",
                    "--set", f"dht_bootstrap={json.dumps([bootstrap])}",
                    "--set", f"dht_record_ttl={ttl}", "--set", f"dht_republish={ttl / 3}",
                    "--set", "dht_rpc_timeout=3.0",
                    # datagrams that fit the WAN path (the LAN's 9000 bytes do not cross it)
                    "--max-datagram-size", "1452"]
            for o in (hosts if peers is None else peers):
                if o is not h:
                    args += ["--peer", f"{o.address}:{PORT}"]
            procs.append(h.python(args, stdout=subprocess.PIPE, text=True))
        for p in procs:
            assert "ready" in next_json(p, 60)
        self.procs += procs
        return procs

    def status(self, host) -> dict:
        """The node's status file (members, and the remote zones its DHT heard from)."""
        return json.loads((self.work / host.name / "mesh.json").read_text())

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def zones(needs_lab: None, tmp_path) -> Iterator[tuple[Zones, bytes]]:
    """A fresh 3x3 lab (WAN links capped), an origin object (32 blocks) served from the origin
    host, and a Zones harness."""
    zlab = ZoneLab(3, 3, wan_delay=DELAY, wan_rate=RATE)
    make_file(tmp_path / "m.bin", 32 * BLOCK, seed=9)
    origin = zlab.origin.python(["-m", "meshcache.lab.httporigin", "--dir", str(tmp_path),
                                 "--host", zlab.origin.address, "--port", "8080"],
                                stdout=subprocess.PIPE, text=True)
    base = origin.stdout.readline().strip()
    z = Zones(zlab, tmp_path, f"{base}/m.bin")
    try:
        yield z, (tmp_path / "m.bin").read_bytes()
    finally:
        z.close()
        origin.terminate()
        origin.wait(10)
        zlab.close()


def test_zones_find_each_other_and_a_block_crosses_into_b_once(zones) -> None:
    z, data = zones
    want = digest(data).hex()
    lab = z.lab
    go_a, go_b = z.work / "go-a", z.work / "go-b"
    a = z.start(lab.zones["a"], go_a)                    # a0 is everyone's DHT bootstrap
    b = z.start(lab.zones["b"], go_b)
    c = z.start(lab.zones["c"], z.work / "never")
    go_a.write_text("go")
    assert all(next_json(p, 120)["digest"] == want for p in a)
    time.sleep(4)                                        # announcements batched every 2 s
    deadline = time.monotonic() + 30                     # one bootstrap address: all zones meet
    while time.monotonic() < deadline:
        seen = [set(z.status(h).get("remote_zones", {})) for h in lab.hosts]
        if all(s >= set("abc") - {lab.zone_of(h)} for s, h in zip(seen, lab.hosts)):
            break
        time.sleep(0.5)
    assert all(s >= set("abc") - {lab.zone_of(h)} for s, h in zip(seen, lab.hosts)), seen
    before = lab.wan_bytes()
    go_b.write_text("go")
    results = [next_json(p, 120) for p in b]
    moved = {k: v - before[k] for k, v in lab.wan_bytes().items()}
    assert all(r["digest"] == want for r in results), results
    assert sum(r["bytes_from_origin"] for r in results) == 0
    assert len(data) <= moved["a>b"] < 1.10 * len(data)    # once, plus packet headers
    assert moved["origin>b"] < 0.01 * len(data)
    print(f"a>b carried {moved['a>b'] / len(data):.3f}x the object for 3 readers in zone b")
    del c


def seed_zone_a(z: Zones, want: str) -> None:
    """Zone a reads the object from the origin: now it is cached in zone a and announced."""
    go = z.work / "go-a"
    a = z.start(z.lab.zones["a"], go)
    go.write_text("go")
    assert all(next_json(p, 120)["digest"] == want for p in a)
    time.sleep(4)                       # announcements are batched every 2 s, then stored


def test_a_node_without_the_credential_learns_no_record_and_gets_no_block(zones) -> None:
    z, data = zones
    want = digest(data).hex()
    seed_zone_a(z, want)
    c0 = z.lab.zones["c"][0]
    before = z.lab.wan_bytes()
    go = z.work / "go-c"
    go.write_text("go")
    [stranger] = z.start([c0], go, secret=new_secret(), members=0)
    result = next_json(stranger, 120)
    moved = {k: v - before[k] for k, v in z.lab.wan_bytes().items()}
    assert result["digest"] == want
    assert result["bytes_from_origin"] == len(data)          # everything from its own origin
    assert not [k for k, v in result.items() if k.startswith("bytes_from_zone") and v]
    assert not z.status(c0).get("remote_zones")              # no DHT node answered it
    assert moved["a>c"] < 0.01 * len(data)


def test_a_zone_cut_off_from_the_others_reads_its_own_origin(zones) -> None:
    z, data = zones
    want = digest(data).hex()
    seed_zone_a(z, want)
    go = z.work / "go-c"
    c = z.start(z.lab.zones["c"], go)
    time.sleep(2)                                            # c's DHT has met a and b
    z.lab.cut("c")
    before = z.lab.wan_bytes()
    go.write_text("go")
    results = [next_json(p, 180) for p in c]
    moved = {k: v - before[k] for k, v in z.lab.wan_bytes().items()}
    assert all(r["digest"] == want for r in results), results
    assert sum(r["bytes_from_origin"] for r in results) == len(data)   # once for the zone
    assert moved["a>c"] == moved["b>c"] == 0


def test_records_of_a_killed_zone_stop_being_used_after_their_ttl(zones) -> None:
    z, data = zones
    want = digest(data).hex()
    ttl = 4.0
    go_a = z.work / "go-a"
    a = z.start(z.lab.zones["a"], go_a, ttl=ttl)
    go_a.write_text("go")
    assert all(next_json(p, 120)["digest"] == want for p in a)
    time.sleep(3)                                            # announced (batched every 2 s)
    for p in a:
        p.kill()                                             # gone without a word
        p.wait()
    time.sleep(ttl + 1)
    go = z.work / "go-b"
    b = z.start(z.lab.zones["b"], go)
    t = time.monotonic()
    go.write_text("go")
    results = [next_json(p, 180) for p in b]
    assert all(r["digest"] == want for r in results), results
    assert sum(r["bytes_from_origin"] for r in results) == len(data)
    assert sum(r["peer_errors"] for r in results) == 0       # no dead provider was tried
    print(f"zone b read in {time.monotonic() - t:.1f} s after zone a's records expired")
