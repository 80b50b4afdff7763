"""Wires the relay: WebSocket server, admin endpoint, shutdown with drain."""

from __future__ import annotations

import asyncio
import logging
import uuid

from picows import WSCloseCode, ws_create_server

from fastrelay.io.admin import start_admin
from fastrelay.lifecycle import announce_ready, format_address
from fastrelay.metrics import make_registry
from fastrelay.relay.config import RelayConfig
from fastrelay.relay.server import Relay
from fastrelay.tls import server_context

log = logging.getLogger("fastrelay.relay")
DRAIN_POLL = 0.05


async def serve(config: RelayConfig, stop: asyncio.Event) -> int:
    instance_id = config.instance_id or f"relay-{uuid.uuid4().hex[:12]}"
    relay = Relay(config, instance_id)
    tls = server_context(config.tls_cert, config.tls_key) if config.tls_cert else None
    host, port = config.listen
    server = await ws_create_server(
        relay.listener_factory,
        host,
        port,
        ssl=tls,
        enable_auto_ping=True,
        auto_ping_idle_timeout=config.ping_interval,
        auto_ping_reply_timeout=config.ping_interval,
        max_frame_size=config.max_frame_size,
        websocket_handshake_timeout=5,
    )
    registry = make_registry("relay", lambda: relay.stats.collect(relay))

    def ready() -> tuple[bool, str]:
        return (False, "draining") if relay.draining else (True, "ready")

    admin = await start_admin(*config.admin, registry, ready)
    listen = format_address(server.sockets[0].getsockname())
    admin_at = format_address(admin.sockets[0].getsockname())
    log.info(
        "relay %s listening on %s%s, admin on %s",
        instance_id,
        "wss://" if tls else "ws://",
        listen,
        admin_at,
    )
    announce_ready("relay", listen=listen, admin=admin_at, instance=instance_id)

    await stop.wait()
    log.info("shutting down: no new connections, draining %d streams", relay.active_streams)
    server.close()
    relay.start_draining()
    deadline = asyncio.get_running_loop().time() + config.drain_timeout
    while relay.active_streams and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(DRAIN_POLL)
    for peer in [*relay.clients, *relay.agents.agents]:
        if peer.transport is not None:
            peer.transport.send_close(WSCloseCode.GOING_AWAY, b"relay shutting down")
            peer.transport.disconnect()
    admin.close()
    await asyncio.sleep(0.05)  # let the CLOSE frames leave
    log.info("relay stopped")
    return 0
