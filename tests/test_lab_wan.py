"""The 3-zone lab: zones on their own bridges joined by TUN relays that add 20 ms one way, carry a
1500-byte MTU and are capped with tbf; bytes counted per link; teardown leaves nothing, also after
the building process is killed. Needs root (skips with the reason otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from meshcache.lab.netns import Host, cleanup_stale, requires_root
from meshcache.lab.zones import ZoneLab
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
