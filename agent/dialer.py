"""Opening a target for a stream: resolve, check egress policy, dial.

The policy is checked against the resolved addresses, and the agent dials
exactly an address that passed the check (never the name again), so DNS
cannot swap in a forbidden address between check and connect.

The host is normalised once, first (IDNA UTS #46, one trailing dot dropped): the policy judges
and the resolver looks up that same name. A host that cannot be normalised (an empty label, a
label over 63 characters, over 253 in all, a code point IDNA disallows) is refused at once with
a 502, reason ``dns``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections import Counter
from dataclasses import dataclass

import aiofastnet

from agent.policy import EgressPolicy
from fastrelay.io.tunnel import StreamSocket
from fastrelay.protocol.hostname import HostnameError, normalize_hostname
from fastrelay.protocol.session import Stream
from fastrelay.protocol.status import Failure, dial_failure

# The agent's dial results: ok, and the reason word of every dial failure.
DIAL_FAILURES = (
    Failure.DENIED,
    Failure.REFUSED,
    Failure.UNREACHABLE,
    Failure.DNS,
    Failure.DIAL_TIMEOUT,
    Failure.DIAL_ERROR,
)
DIAL_RESULTS = ("ok", *(failure.reason for failure in DIAL_FAILURES))


@dataclass(frozen=True)
class DialFailure(Exception):
    failure: Failure  # one of DIAL_FAILURES: its status answers the open
    message: str


async def resolve(host: str, port: int) -> list[str]:
    """The addresses to dial for host:port. An IP literal is its own answer: no
    getaddrinfo (a thread-pool round trip) on the open path."""
    try:
        # A strict dotted quad (inet_pton's form) is what ipaddress would print back; the
        # ipaddress round trip costs ~10 µs per open, inet_pton well under one.
        socket.inet_pton(socket.AF_INET, host)
        return [host]
    except (OSError, ValueError):
        pass
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass  # a name
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DialFailure(Failure.DNS, f"DNS lookup of {host} failed: {exc.strerror}") from None
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def _connect(
    loop: asyncio.AbstractEventLoop, stream: Stream, ip: str, port: int
) -> asyncio.Transport:
    """A transport for the stream, connected to ip:port.

    An IPv4 address is connected here and the socket handed to aiofastnet: its
    create_connection with a host connects through loop.sock_connect, and uvloop's
    sock_connect looks every address up with getaddrinfo in libuv's thread pool, even an IP
    literal (it asks without a socket type, which its numeric fast path needs): a thread
    round trip, three futex calls and ~30 µs of CPU per open at the agent. IPv6 (a zone
    needs the resolver's scope id) still goes through aiofastnet's create_connection."""
    if ":" in ip:
        transport, _ = await aiofastnet.create_connection(
            loop, lambda: StreamSocket(stream), ip, port
        )
        return transport
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setblocking(False)
        await _sock_connect(loop, sock, (ip, port))
        transport, _ = await aiofastnet.create_connection(
            loop, lambda: StreamSocket(stream), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    return transport


async def _sock_connect(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, address: tuple[str, int]
) -> None:
    """loop.sock_connect for a resolved address, without the look-up: a non-blocking
    connect, then wait until the socket is writable. Fails as the loops' own does: what
    connect() raises, or OSError(errno, "Connect call failed ('ip', port)")."""
    try:
        sock.connect(address)
        return
    except (BlockingIOError, InterruptedError):
        pass
    done: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, _connect_done, done, sock, address)
    try:
        await done
    finally:
        loop.remove_writer(fd)


def _connect_done(done: asyncio.Future[None], sock: socket.socket, address: object) -> None:
    if done.done():
        return
    try:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err, f"Connect call failed {address}")
    except (BlockingIOError, InterruptedError):
        return  # not yet: the writer stays registered
    except BaseException as exc:
        done.set_exception(exc)
    else:
        done.set_result(None)


async def dial(
    stream: Stream, host: str, port: int, policy: EgressPolicy, counts: Counter[str]
) -> asyncio.Transport:
    """Connect the stream's target; raise DialFailure with the status to answer."""
    policy.watch_interfaces()  # the host's interface addresses stay fresh (a timer, once per loop)
    try:
        host = normalize_hostname(host)
    except HostnameError as exc:
        raise DialFailure(Failure.DNS, str(exc)) from None
    refused = policy.check_normalized_name(host, port)
    if refused is not None:
        raise DialFailure(Failure.DENIED, f"egress policy: {refused.reason}")
    addresses = await resolve(host, port)
    allowed = [ip for ip in addresses if policy.check_normalized(host, ip, port).allowed]
    if not allowed:
        decision = policy.check_normalized(host, addresses[0], port)
        raise DialFailure(Failure.DENIED, f"egress policy: {decision.reason}")
    loop = asyncio.get_running_loop()
    last: DialFailure | None = None
    for ip in allowed:
        try:
            transport = await _connect(loop, stream, ip, port)
            # StreamSocket pauses reading in connection_made, but aiofastnet adds
            # its reader only after connection_made returns: the transport then
            # believes it is paused while its reader is registered, and closing it
            # unopened (an open the relay gave up on) leaves that reader on the fd
            # number, so the next socket to reuse the fd is never read and epoll
            # spins. Pausing again now really removes the reader.
            transport.resume_reading()
            transport.pause_reading()
            return transport
        except OSError as exc:
            last = DialFailure(*dial_failure(exc, host, port))
    assert last is not None
    raise last
