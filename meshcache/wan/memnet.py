"""An in-memory datagram network: many DHT nodes in one process, no sockets (tests, benchmarks).

Each endpoint is an asyncio DatagramProtocol attached at an address; `sendto` hands the bytes to
the destination's `datagram_received` on the next loop iteration. Endpoints can be killed (their
datagrams vanish, as a host that died without notice), a `drop` predicate loses chosen ones and
`delay` holds them back (a WAN link).
"""

from __future__ import annotations

import asyncio
from typing import Callable

Address = tuple[str, int]


class MemoryDatagramTransport(asyncio.DatagramTransport):
    """The transport an attached protocol sends through."""

    def __init__(self, network: "MemoryNetwork", address: Address) -> None:
        super().__init__()
        self.network = network
        self.address = address
        self._closed = False

    def sendto(self, data: bytes, addr: Address | None = None) -> None:  # type: ignore[override]
        if not self._closed and addr is not None:
            self.network.deliver(self.address, tuple(addr), bytes(data))

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.address if name == "sockname" else default

    def close(self) -> None:
        self._closed = True
        self.network.detach(self.address)

    def is_closing(self) -> bool:
        return self._closed


class MemoryNetwork:
    """Addresses -> protocols; counts datagrams and bytes."""

    def __init__(self) -> None:
        self._endpoints: dict[Address, asyncio.DatagramProtocol] = {}
        self._dead: set[Address] = set()
        self.drop: Callable[[Address, Address, bytes], bool] | None = None
        self.delay: Callable[[Address, Address], float] | None = None  # one-way seconds
        self.datagrams = 0
        self.bytes = 0

    def attach(self, protocol: asyncio.DatagramProtocol, address: Address) -> Address:
        if address in self._endpoints:
            raise ValueError(f"address {address} is taken")
        self._endpoints[address] = protocol
        protocol.connection_made(MemoryDatagramTransport(self, address))
        return address

    def detach(self, address: Address) -> None:
        self._endpoints.pop(address, None)

    def kill(self, address: Address) -> None:
        """The endpoint stops receiving and sending, without notice."""
        self._dead.add(address)

    def deliver(self, src: Address, dst: Address, data: bytes) -> None:
        if src in self._dead or dst in self._dead:
            return
        proto = self._endpoints.get(dst)
        if proto is None or (self.drop is not None and self.drop(src, dst, data)):
            return
        self.datagrams += 1
        self.bytes += len(data)
        loop = asyncio.get_running_loop()
        delay = self.delay(src, dst) if self.delay is not None else 0.0
        if delay > 0:
            loop.call_later(delay, proto.datagram_received, data, src)
        else:
            loop.call_soon(proto.datagram_received, data, src)
