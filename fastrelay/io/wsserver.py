"""The relay's WebSocket listener: picows' server, plus the peer's address.

picows hands the upgrade hook only the HTTP request, yet an operator needs the
address behind a rejected token. `ws_create_server` builds each connection's
WSProtocol from a fixed factory, so this module builds them itself (the same
arguments, in picows 2.3's order) with a hook that can read the socket's
peer name. It runs once per connection; frames never pass through here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from picows import WSAutoPingStrategy, WSUpgradeRequest
from picows.picows import WSProtocol

from fastrelay.io import listener
from fastrelay.lifecycle import format_address

UpgradeHook = Callable[[WSUpgradeRequest, str], object]
_picows_log = logging.getLogger("picows.server")


def peer_address(protocol: WSProtocol | None) -> str:
    transport = None if protocol is None else protocol.transport
    if transport is None:
        return "unknown"
    peer = transport.underlying_transport.get_extra_info("peername")
    return format_address(peer) if peer else "unknown"


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
) -> asyncio.AbstractServer:
    """Like picows.ws_create_server, but `on_upgrade(request, peer)` also gets
    the peer's address. Pings go out every `ping_interval` (not only when idle)
    so the round-trip time is measured under load too; a peer that misses a
    pong for that long is dropped."""

    def protocol_factory() -> WSProtocol:
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
