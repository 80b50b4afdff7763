"""The relay's WebSocket listener: picows' server, plus the peer's address
and limits on the upgrade request's head.

picows hands the upgrade hook only the HTTP request, yet an operator needs the
address behind a rejected token. `ws_create_server` builds each connection's
WSProtocol from a fixed factory, so this module builds them itself (the same
arguments, in picows 2.3's order) with a hook that can read the socket's
peer name.

picows drops an oversized head without a word (and the close, with the rest
of the head unread, resets the connection). So each connection starts with an
`UpgradeGate` as its protocol: it collects the head and checks it
(httphead.HeadScanner). An oversized one gets 431 with the limit it broke; a
complete one makes the gate build the WSProtocol, hand it the transport
(`set_protocol`) and the bytes read so far, and step aside. From then on the
transport calls picows directly: frames never pass through here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from picows import WSAutoPingStrategy, WSUpgradeRequest
from picows.picows import WSProtocol  # type: ignore[attr-defined]  # not in picows' stubs

from fastrelay.io import listener
from fastrelay.io.httphead import (
    RELAY_LIMITS,
    STATUS_431,
    HeadLimits,
    HeadScanner,
    Refusal,
    response,
    send_and_linger,
)
from fastrelay.lifecycle import format_address

UpgradeHook = Callable[[WSUpgradeRequest, str], object]
RefusalHook = Callable[[Refusal, str], None]  # (what was refused, the peer's address)
_picows_log = logging.getLogger("picows.server")
log = logging.getLogger("fastrelay.wsserver")


def peer_address(protocol: WSProtocol | None) -> str:
    transport = None if protocol is None else protocol.transport
    if transport is None:
        return "unknown"
    peer = transport.underlying_transport.get_extra_info("peername")
    return format_address(peer) if peer else "unknown"


class UpgradeGate(asyncio.Protocol):
    """A connection's protocol until its upgrade head is complete and within
    the limits; then the WSProtocol from `make_ws` takes over the transport.
    A head not complete within `timeout` seconds is closed (as picows' own
    handshake timeout would); one over a limit gets 431, then the gate reads
    and discards until the peer closes or that same deadline passes."""

    __slots__ = (
        "buffer", "make_ws", "on_refused", "refused", "scanner", "timeout", "timer", "transport",
    )  # fmt: skip

    def __init__(
        self,
        make_ws: Callable[[], WSProtocol],
        limits: HeadLimits,
        timeout: float | None,
        on_refused: RefusalHook | None,
    ) -> None:
        self.make_ws = make_ws
        self.scanner = HeadScanner(limits)
        self.on_refused = on_refused
        self.buffer = bytearray()
        self.refused = False
        self.transport: asyncio.Transport | None = None
        self.timeout = timeout
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.timeout is not None:  # from here, as picows' own handshake timeout
            self.timer = asyncio.get_running_loop().call_later(self.timeout, self._expired)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # lingering after the 431: discard
        buffer = self.buffer
        buffer += data
        found = self.scanner.scan(buffer)
        if found is None:
            return
        if isinstance(found, Refusal):
            self._refuse(found)
        else:
            self._hand_over()

    def eof_received(self) -> bool | None:
        return None  # close (after the 431, the peer has read it and closed)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        transport = self.transport
        if transport is None:
            return
        if self.refused:
            transport.abort()  # still sending after the 431, or not reading it
        else:
            log.debug("upgrade head not complete in time; closing")
            transport.close()

    def _refuse(self, refusal: Refusal) -> None:
        assert self.transport is not None
        self.refused = True
        self.buffer = bytearray()
        peer = self.transport.get_extra_info("peername")
        if self.on_refused is not None:
            self.on_refused(refusal, format_address(peer) if peer else "unknown")
        body = f"{refusal.reason}\n".encode()
        if not send_and_linger(self.transport, response(STATUS_431, body)):
            self._cancel_timer()

    def _hand_over(self) -> None:
        transport = self.transport
        assert transport is not None
        self._cancel_timer()
        data = memoryview(bytes(self.buffer))
        self.buffer = bytearray()
        ws = self.make_ws()
        transport.set_protocol(ws)
        ws.connection_made(transport)
        # picows reads into its own buffer: give it what arrived so far, in
        # pieces as large as it offers (the head alone may exceed its first one).
        offset, total = 0, len(data)
        while offset < total and not transport.is_closing():
            window = ws.get_buffer(-1)
            n = min(len(window), total - offset)
            window[:n] = data[offset : offset + n]
            ws.buffer_updated(n)
            offset += n


async def create_ws_server(
    on_upgrade: UpgradeHook,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    ping_interval: float,
    max_frame_size: int,
    handshake_timeout: float = 5.0,
    reuse_port: bool = False,
    head_limits: HeadLimits = RELAY_LIMITS,
    on_refused: RefusalHook | None = None,
) -> asyncio.AbstractServer:
    """Like picows.ws_create_server, but `on_upgrade(request, peer)` also gets
    the peer's address. Pings go out every `ping_interval` (not only when idle)
    so the round-trip time is measured under load too; a peer that misses a
    pong for that long is dropped. An upgrade head over `head_limits` gets 431
    and `on_refused(refusal, peer)` is called."""

    def protocol_factory() -> UpgradeGate:
        return UpgradeGate(make_ws, head_limits, handshake_timeout, on_refused)

    def make_ws() -> WSProtocol:
        protocol: WSProtocol | None = None

        def hook(request: WSUpgradeRequest) -> object:
            return on_upgrade(request, peer_address(protocol))

        protocol = WSProtocol(
            None,  # host+port: client side only
            None,  # ws_path: client side only
            False,  # is_client_side
            hook,
            _picows_log,
            True,  # disconnect_on_exception
            handshake_timeout,
            True,  # enable_auto_ping
            ping_interval,
            ping_interval,  # reply timeout
            WSAutoPingStrategy.PING_PERIODICALLY,
            True,  # enable_auto_pong
            max_frame_size,
            None,  # extra_headers: client side only
            16 * 1024,  # read_buffer_init_size, picows' default
        )
        return protocol

    loop = asyncio.get_running_loop()
    return await listener.create_server(  # pauses when out of fds, see there
        loop, protocol_factory, host, port, ssl=ssl_context, reuse_port=reuse_port or None
    )
