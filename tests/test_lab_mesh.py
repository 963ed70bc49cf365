"""The LAN mesh on real network hosts: network namespaces on a bridge (MTU 9000), one meshcache
process per host, an HTTP origin on its own host. Needs root (skips with the reason otherwise)."""

from __future__ import annotations

import subprocess
import time

import pytest

from meshcache.core.digest import digest
from meshcache.lab.httporigin import make_file
from meshcache.lab.lines import next_json, rest_of_output

from tests.conftest import CLUSTER_SECRET, OTHER_SECRET
from tests.lab_fixtures import lab, needs_lab  # noqa: F401

BLOCK = 256 * 1024
PORT = 7946
SECRET = CLUSTER_SECRET


def start_origin(lab_, directory):
    proc = lab_.origin.python(["-m", "meshcache.lab.httporigin", "--dir", str(directory),
                               "--host", lab_.origin.address, "--port", "8080"],
                              stdout=subprocess.PIPE, text=True)
    base = proc.stdout.readline().strip()
    assert base.startswith("http://"), base
    return proc, base


def mesh_events(tmp_path):
    """The nodes' log lines about members and failed peers (for a failure's message)."""
    words = ("suspect", "down", "failed", "avoided", "alive again")
    return "\n".join(f"{f.stem}: {line}" for f in sorted(tmp_path.glob("*.log"))
                     for line in f.read_text(errors="replace").splitlines()
                     if any(w in line for w in words))


def start_nodes(lab_, hosts, tmp_path, url, go, secret=SECRET, members=None, peer_hosts=None):
    procs = []
    for h in hosts:
        peers = [f"{o.address}:{PORT}" for o in (peer_hosts or hosts) if o is not h]
        args = ["-m", "meshcache.lab.meshnode", "--cache-dir", str(tmp_path / h.name),
                "--listen", f"{h.address}:{PORT}", "--secret", secret, "--url", url,
                "--go", str(go), "--block-size", str(BLOCK),
                "--log", str(tmp_path / f"{h.name}.log"),
                "--members", str(len(hosts) - 1 if members is None else members)]
        for p in peers:
            args += ["--peer", p]
        procs.append(h.python(args, stdout=subprocess.PIPE, text=True))
    for p in procs:
        assert "ready" in next_json(p, 60)
    return procs


@pytest.mark.timeout(240)
def test_eight_hosts_read_one_object_and_the_origin_serves_each_block_once(lab, tmp_path):
    lab8 = lab(8, origin=True)
    size = 48 * BLOCK + 1234
    make_file(tmp_path / "model.bin", size, seed=3)
    want = digest((tmp_path / "model.bin").read_bytes()).hex()
    origin, base = start_origin(lab8, tmp_path)
    go = tmp_path / "go"
    procs = start_nodes(lab8, lab8.hosts, tmp_path, f"{base}/model.bin", go)
    time.sleep(1.0)  # members settle, summaries go out
    go.write_text("go")
    results = [next_json(p, 120) for p in procs]
    for p in procs:
        p.terminate()
    origin.terminate()
    for r in results:
        assert "error" not in r, r
        assert r["digest"] == want and r["members"] == 7
    total_origin = sum(r["bytes_from_origin"] for r in results)
    # every block left the origin once
    assert total_origin == size, (total_origin, size, results, mesh_events(tmp_path))
    assert sum(r["origin_requests"] for r in results) == 49
    assert sum(r["bytes_from_peers"] for r in results) == 7 * size


@pytest.mark.timeout(240)
def test_member_killed_mid_read_leaves_the_others_complete(lab, tmp_path):
    lab4 = lab(4, origin=True)
    size = 64 * BLOCK
    make_file(tmp_path / "m.bin", size, seed=4)
    want = digest((tmp_path / "m.bin").read_bytes()).hex()
    origin, base = start_origin(lab4, tmp_path)
    go = tmp_path / "go"
    # the origin is slow (8 Mbit/s) so the kill lands mid-read
    lab4.cap_egress(lab4.origin, 80e6)
    procs = start_nodes(lab4, lab4.hosts, tmp_path, f"{base}/m.bin", go)
    go.write_text("go")
    time.sleep(0.6)
    procs[3].kill()
    procs[3].wait(10)
    killed_said = rest_of_output(procs[3])
    results = [next_json(p, 150) for p in procs[:3]]
    for p in procs:
        p.terminate()
    origin.terminate()
    # The kill landed mid-read: the victim had not finished, and the others were still reading.
    assert '"seconds"' not in killed_said and '"error"' not in killed_said
    for r in results:
        assert "error" not in r, r
        assert r["digest"] == want
        assert r["seconds"] > 0.6


@pytest.mark.timeout(180)
def test_wrong_credential_learns_nothing(lab, tmp_path):
    lab3 = lab(3, origin=True)
    size = 8 * BLOCK
    make_file(tmp_path / "m.bin", size, seed=5)
    want = digest((tmp_path / "m.bin").read_bytes()).hex()
    origin, base = start_origin(lab3, tmp_path)
    go = tmp_path / "go"
    go.write_text("go")
    good = start_nodes(lab3, lab3.hosts[:2], tmp_path, f"{base}/m.bin", go)
    good_results = [next_json(p, 60) for p in good]
    bad = start_nodes(lab3, [lab3.hosts[2]], tmp_path, f"{base}/m.bin", go, secret=OTHER_SECRET,
                      members=0, peer_hosts=lab3.hosts)
    # it is told about the good hosts but cannot join them
    bad_result = next_json(bad[0], 60, log=tmp_path / f"{lab3.hosts[2].name}.log")
    for p in good + bad:
        p.terminate()
    origin.terminate()
    assert all(r["digest"] == want for r in good_results)
    assert bad_result["digest"] == want  # from the origin
    assert bad_result["members"] == 0 and bad_result["bytes_from_peers"] == 0


@pytest.mark.timeout(120)
def test_three_hosts_find_each_other_by_mdns(lab, tmp_path):
    lab3 = lab(3)
    procs = []
    for h in lab3.hosts:
        procs.append(h.python(["-m", "meshcache.lab.meshnode", "--cache-dir",
                               str(tmp_path / h.name), "--listen", f"{h.address}:{PORT}",
                               "--secret", SECRET, "--mdns", "--interface", h.address,
                               "--members", "2", "--block-size", str(BLOCK),
                               "--report-members"],
                              stdout=subprocess.PIPE, text=True))
    try:
        for p in procs:
            assert "ready" in next_json(p, 60)
        seen = [next_json(p, 30) for p in procs]
        assert all(s["members"] == 2 for s in seen), seen
        assert max(s["waited"] for s in seen) < 5.0  # "within a few seconds"
    finally:
        for p in procs:
            p.terminate()
