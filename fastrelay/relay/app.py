"""Wires the relay: admin endpoint, WebSocket server, shutdown with drain."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from itertools import chain

from fastrelay.accesslog import AccessLog
from fastrelay.io import listener
from fastrelay.io.admin import Readiness, start_admin
from fastrelay.io.wsserver import create_ws_server
from fastrelay.lifecycle import announce_ready, follow_parent, format_address, on_sighup
from fastrelay.metrics import make_registry
from fastrelay.relay.cluster import RedisMembership, StaticMembership
from fastrelay.relay.config import RelayConfig
from fastrelay.relay.server import Relay
from fastrelay.relay.supervisor import SUPERVISOR_ENV, serve_workers
from fastrelay.tls import server_context

log = logging.getLogger("fastrelay.relay")
DRAIN_POLL = 0.05
DRAIN_REPORT_EVERY = 5.0  # seconds between "still draining" lines...
DRAIN_REPORTS = 12  # ...and at most this many, however long --drain-timeout is


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def drain_state(relay: Relay) -> str:
    """What a shutdown waits for, e.g. '3 tunnels on 2 client_a connections'."""
    clients = relay.clients
    busy = sum(1 for conn in clients if conn.sends)
    text = f"{_plural(relay.active_streams, 'tunnel')} on {_plural(busy, 'client_a connection')}"
    if len(clients) > busy:
        text += f" (and {len(clients) - busy} idle, closing)"
    return text


async def serve(config: RelayConfig, stop: asyncio.Event) -> int:
    if config.workers > 1:
        return await serve_workers(config, stop)
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor:
        follow_parent(int(supervisor))
    loop = asyncio.get_running_loop()
    instance_id = config.instance_id or f"relay-{uuid.uuid4().hex[:12]}"
    access_log = None
    if config.access_log is not None:
        access_log = AccessLog(config.access_log, config.log_format, "relay")
    on_sighup(access_log.reopen if access_log is not None else None)
    relay = Relay(config, instance_id, access_log)
    if config.cluster:
        relay.membership = RedisMembership(
            config.cluster, config.cluster_name, instance_id, config.cluster_ttl, relay.set_members
        )
    else:
        relay.membership = StaticMembership(instance_id, config.peers)
        relay.set_members(relay.membership.members)
    readiness = Readiness()
    registry = make_registry(
        "relay", lambda: chain(relay.stats.collect(relay), listener.collect()), readiness.check
    )
    # The admin port answers first, so a load balancer sees "starting", not a refused port.
    admin = await start_admin(*config.admin, registry, readiness.check)
    tls = server_context(config.tls_cert, config.tls_key) if config.tls_cert else None
    host, port = config.listen
    server = await create_ws_server(
        relay.listener_factory,
        host,
        port,
        ssl_context=tls,
        ping_interval=config.ping_interval,
        max_frame_size=config.max_frame_size,
        reuse_port=config.reuse_port,
        on_refused=relay.head_refused,
    )
    membership = loop.create_task(relay.membership.run(stop))
    readiness.set("ready")
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
    readiness.set("draining")
    server.close()
    relay.start_draining()
    if relay.active_streams or relay.clients:
        log.info(
            "shutting down: no new connections; waiting up to %gs for %s to finish "
            "(Ctrl-C again to stop at once)",
            config.drain_timeout,
            drain_state(relay),
        )
    else:
        log.info("shutting down: no new connections, nothing open to wait for")
    await relay.membership.leave()
    await membership
    deadline = loop.time() + config.drain_timeout
    # Progress every few seconds while it waits, at most DRAIN_REPORTS lines.
    every = max(DRAIN_REPORT_EVERY, config.drain_timeout / DRAIN_REPORTS)
    next_report = loop.time() + every
    # Until the tunnels are done and the client_a carriers closed (client_a
    # closes a carrier once GOAWAY'd and idle): an open sent just before our
    # GOAWAY reached it still gets its 503 "draining", not a dropped connection.
    while (relay.active_streams or relay.clients) and loop.time() < deadline:
        await asyncio.sleep(DRAIN_POLL)
        if loop.time() >= next_report and loop.time() < deadline:
            next_report += every
            log.info(
                "still draining: %s; %.0fs left (Ctrl-C again to stop at once)",
                drain_state(relay),
                deadline - loop.time(),
            )
    if relay.active_streams:
        log.warning("drain timeout (%gs): closing %s", config.drain_timeout, drain_state(relay))
    relay.close_all("relay shutting down")
    relay.close()
    admin.close()
    await asyncio.sleep(0.05)  # let the CLOSE frames leave
    if access_log is not None:
        access_log.close()
    log.info("relay stopped")
    return 0
