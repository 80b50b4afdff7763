"""A small authoritative DNS server on loopback, for the agent's resolver under test.

It answers A and AAAA questions (RFC 1035 over UDP) from a fixed table, with one TTL for every
record (and for negative answers, in their SOA: RFC 2308). A name under one of the ``stall``
suffixes gets no answer at all (a hostile or dead authority), a name in ``hold`` its answer only
when the test calls ``release()``, and any other name NXDOMAIN. It counts the questions it saw
per name, so a test can tell a cached answer from a fresh look-up.

Run alone: ``python tests/support/dns_server.py name=address[,address]... [--stall SUFFIX]``;
it binds a free port on 127.0.0.1 and prints a JSON ready line with ``dns`` (IP:PORT).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import struct
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

TYPE_A = 1
TYPE_AAAA = 28
TYPE_SOA = 6
NXDOMAIN = 3
FORMERR = 1


def _question(packet: bytes) -> tuple[str, int, int] | None:
    """(name, qtype, end of the question) of a one-question query, else None."""
    if len(packet) < 12 or struct.unpack_from("!H", packet, 4)[0] != 1:
        return None
    labels: list[str] = []
    at = 12
    while at < len(packet):
        size = packet[at]
        at += 1
        if size == 0:
            if at + 4 > len(packet):
                return None
            qtype = struct.unpack_from("!H", packet, at)[0]
            return ".".join(labels).lower(), qtype, at + 4
        if size > 63 or at + size > len(packet):
            return None
        labels.append(packet[at : at + size].decode("ascii", "replace"))
        at += size
    return None


def answer(
    packet: bytes, table: Mapping[str, Iterable[str]], ttl: int, stall: Iterable[str] = ()
) -> bytes | None:
    """The response to one query packet, or None to stay silent."""
    question = _question(packet)
    flags = struct.unpack_from("!H", packet, 2)[0] if len(packet) >= 4 else 0
    rd = flags & 0x0100
    if question is None:
        return packet[:2] + struct.pack("!HHHHH", 0x8000 | rd | FORMERR, 0, 0, 0, 0)
    name, qtype, end = question
    if any(name == s or name.endswith("." + s) for s in stall):
        return None
    records: list[bytes] = []
    rcode = 0
    if name not in table:
        rcode = NXDOMAIN
    else:
        for address in table[name]:
            ip = ipaddress.ip_address(address)
            rtype = TYPE_A if ip.version == 4 else TYPE_AAAA
            if rtype == qtype:
                data = ip.packed
                records.append(struct.pack("!HHHIH", 0xC00C, rtype, 1, ttl, len(data)) + data)
    authority = b""
    if not records:  # NXDOMAIN or no record of this type: an SOA gives the negative TTL
        soa = b"\x02ns\x04test\x00\x04root\x04test\x00" + struct.pack("!5I", 1, 60, 60, 60, ttl)
        authority = struct.pack("!HHHIH", 0xC00C, TYPE_SOA, 1, ttl, len(soa)) + soa
    header = struct.pack(
        "!HHHHHH", 0, 0x8400 | 0x0080 | rd | rcode, 1, len(records), 1 if authority else 0, 0
    )
    return packet[:2] + header[2:] + packet[12:end] + b"".join(records) + authority


class DnsServer(asyncio.DatagramProtocol):
    def __init__(
        self,
        table: Mapping[str, Iterable[str]],
        ttl: int = 60,
        stall: Iterable[str] = (),
        hold: Iterable[str] = (),
    ) -> None:
        self.table = {name.lower(): list(addresses) for name, addresses in table.items()}
        self.ttl = ttl
        self.stall = tuple(stall)
        self.hold = set(hold)
        self.held: list[tuple[bytes, tuple[str, int]]] = []
        self.questions: Counter[str] = Counter()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        question = _question(data)
        if question is not None:
            self.questions[question[0]] += 1
            if question[0] in self.hold:
                self.held.append((data, addr))
                return
        self.reply(data, addr)

    def release(self) -> None:
        """Answer every held question now (and later ones at once)."""
        self.hold.clear()
        held, self.held = self.held, []
        for data, addr in held:
            self.reply(data, addr)

    def reply(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(data, self.table, self.ttl, self.stall)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


@contextmanager
def running(
    table: Mapping[str, Iterable[str]], ttl: int = 60, stall: Iterable[str] = ()
) -> Iterator[tuple[DnsServer, str]]:
    """A DnsServer on 127.0.0.1 in a thread of its own, for tests that start programs which
    use it (``--dns-server``): the server, and its address as IP:PORT. Stopped on exit."""
    server = DnsServer(table, ttl, stall)
    loop = asyncio.new_event_loop()
    bound: list[str] = []
    ready = threading.Event()

    def serve() -> None:
        transport, _ = loop.run_until_complete(
            loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
        )
        bound.append(f"127.0.0.1:{transport.get_extra_info('sockname')[1]}")
        ready.set()
        try:
            loop.run_forever()
        finally:
            transport.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    thread = threading.Thread(target=serve, name="dns-server", daemon=True)
    thread.start()
    try:
        if not ready.wait(10):
            raise RuntimeError("the DNS server did not start")
        yield server, bound[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


async def _main(argv: list[str]) -> None:
    stall = [argv[i + 1] for i, a in enumerate(argv) if a == "--stall"]
    table: dict[str, list[str]] = {}
    for item in argv:
        name, sep, addresses = item.partition("=")
        if sep:
            table[name] = addresses.split(",")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: DnsServer(table, stall=stall), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    print(json.dumps({"event": "ready", "dns": f"127.0.0.1:{port}"}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
