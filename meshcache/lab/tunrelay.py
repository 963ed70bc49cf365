"""A WAN link between two network namespaces: a user-space process that moves IP packets from a
TUN device in one namespace to a TUN device in the other after a fixed one-way delay.

    python -m meshcache.lab.tunrelay NS_A DEV_A NS_B DEV_B --delay 0.02 [--mtu 1500]

The kernel here has no netem, so delay needs user space; everything else stays in the kernel:
routing (each namespace routes the far subnets out of its TUN device), the link's cap (tc tbf on
the TUN device, whose egress is what this process reads) and byte counting (the TUN devices'
counters: what one side's device received is exactly what this relay carried into it). A link
is one process, so links run on both cores, and the loop is the least Python that can move a
packet: one epoll, non-blocking reads drained in a burst, one FIFO per direction (the delay is
constant, so arrival order is departure order and no heap is needed), writes when due.

It creates both devices (entering each namespace with setns(2)), prints `ready`, and relays until
SIGTERM; the devices vanish with it. Needs root and /dev/net/tun.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import fcntl
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Sequence

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
BURST = 256                  # packets read from one device before looking at the other


def setns(path: str) -> None:
    """Move this (single-threaded) process into the network namespace at path."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_path(name: str) -> str:
    """The bind mount `ip netns add NAME` made."""
    return f"/var/run/netns/{name}"


def open_tun(name: str) -> int:
    """Create TUN device `name` (no packet-info header) in the current namespace; return its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Link:
    """Two TUN fds and a FIFO per direction; `step()` does one round of the loop."""

    def __init__(self, fd_a: int, fd_b: int, delay_s: float):
        self.delay = float(delay_s)
        self.peer = {fd_a: fd_b, fd_b: fd_a}
        self.queue: dict[int, collections.deque[tuple[float, bytes]]] = {
            fd_a: collections.deque(), fd_b: collections.deque()}   # keyed by destination fd
        self.poller = select.epoll()
        for fd in (fd_a, fd_b):
            self.poller.register(fd, select.EPOLLIN)

    def _timeout(self, now: float) -> float:
        """Seconds until the next packet is due (-1: nothing queued, wait for input)."""
        heads = [q[0][0] for q in self.queue.values() if q]
        return max(0.0, min(heads) - now) if heads else -1

    def step(self) -> None:
        """Wait for input or the next due packet; read what arrived; write what is due."""
        events = self.poller.poll(self._timeout(time.monotonic()))
        now = time.monotonic()
        due = now + self.delay
        read = os.read
        for fd, _ in events:
            q = self.queue[self.peer[fd]]
            for _ in range(BURST):
                try:
                    q.append((due, read(fd, 65536)))
                except BlockingIOError:
                    break
        write = os.write
        for dst, q in self.queue.items():
            while q and q[0][0] <= now:
                pkt = q.popleft()[1]
                try:
                    write(dst, pkt)
                except OSError:        # the far device is down (a cut link): the packet is lost
                    pass


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ns_a", help="namespace of the first device (the relay stays in it)")
    p.add_argument("dev_a")
    p.add_argument("ns_b", help="namespace of the second device")
    p.add_argument("dev_b")
    p.add_argument("--delay", type=float, required=True, help="one-way delay, seconds")
    a = p.parse_args(argv)
    setns(netns_path(a.ns_a))
    fd_a = open_tun(a.dev_a)
    setns(netns_path(a.ns_b))
    fd_b = open_tun(a.dev_b)
    setns(netns_path(a.ns_a))          # back: `ip netns pids NS_A` finds the relay at teardown
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    link = Link(fd_a, fd_b, a.delay)
    print("ready", flush=True)
    try:
        while True:
            link.step()
    except (KeyboardInterrupt, SystemExit):
        return 0


if __name__ == "__main__":
    sys.exit(main())
