"""QUIC datagram size from the interface MTU (aioquic has no path-MTU discovery)."""

from meshcache.transport.mtu import auto_datagram_size, datagram_size_for_mtu

from tests.lab_fixtures import lab, needs_lab  # noqa: F401


def test_sizes_from_mtu():
    assert datagram_size_for_mtu(1500) == 1472
    assert datagram_size_for_mtu(1500, ipv6=True) == 1452
    assert datagram_size_for_mtu(9000) == 8972
    assert datagram_size_for_mtu(65536) == 65000
    assert datagram_size_for_mtu(500) == 1200


def test_loopback_and_unknown_addresses():
    assert auto_datagram_size("127.0.0.1") == 65000
    assert auto_datagram_size("203.0.113.9") == 1452  # not ours: the safe default
    assert auto_datagram_size("not-an-ip") == 1452


def test_a_lab_host_uses_its_9000_byte_mtu(lab):
    lab1 = lab(1)
    host = lab1.hosts[0]
    out = host.python_output("from meshcache.transport.mtu import auto_datagram_size as a; "
                             f"print(a('{host.address}'))")
    assert int(out) == 8972
