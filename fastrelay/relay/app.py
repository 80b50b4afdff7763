"""Wires the relay: admin endpoint, WebSocket server, shutdown with drain."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Coroutine
from itertools import chain
from typing import Any

from fastrelay.accesslog import AccessLog
from fastrelay.io import listener
from fastrelay.io.admin import Readiness, start_admin
from fastrelay.io.wsserver import create_ws_server
from fastrelay.lifecycle import (
    Service,
    all_of,
    bound_address,
    follow_parent,
    serve_service,
)
from fastrelay.metrics import make_registry
from fastrelay.protocol.rules import PushedRules
from fastrelay.relay.cluster import RedisMembership, StaticMembership
from fastrelay.relay.config import RelayConfig
from fastrelay.relay.peer import Peer
from fastrelay.relay.rules import load_client_rules
from fastrelay.relay.server import Relay
from fastrelay.relay.supervisor import SUPERVISOR_ENV, serve_workers
from fastrelay.reload import FileReloader, load_at_start
from fastrelay.tls import server_context

log = logging.getLogger("fastrelay.relay")
CLOSE_LINGER = 0.05  # seconds for the CLOSE frames to leave before the process ends
DRAIN_REPORT_EVERY = 5.0  # seconds between "still draining" lines...
DRAIN_REPORTS = 12  # ...and at most this many, however long --drain-timeout is


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def drain_state(relay: Relay) -> str:
    """What a shutdown waits for, e.g. '3 tunnels on 2 client_a connections'."""
    clients = relay.clients
    busy = sum(1 for conn in clients if conn.streams)
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
    return await serve_service(RelayService(config), stop)


class RelayService(Service):
    """One relay process: the admin port, the WebSocket server and the membership."""

    program = name = "relay"
    log = log

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.instance_id = config.instance_id or f"relay-{uuid.uuid4().hex[:12]}"
        if config.access_log is not None:
            self.access_log = AccessLog(config.access_log, config.log_format, "relay")
        self.relay = relay = Relay(config, self.instance_id, self.access_log)
        if config.cluster:
            relay.membership = RedisMembership(
                config.cluster,
                config.cluster_name,
                self.instance_id,
                config.cluster_ttl,
                relay.set_members,
            )
        else:
            relay.membership = StaticMembership(self.instance_id, config.peers)
            relay.set_members(relay.membership.members)
        self.readiness = Readiness()
        self.client_rules: FileReloader[PushedRules] | None = None
        if config.client_rules is not None:
            path, size = config.client_rules, config.max_frame_size
            relay.set_client_rules(
                load_at_start("--client-rules", path, lambda p: load_client_rules(p, size))
            )
            self.client_rules = FileReloader(
                path,
                "--client-rules",
                lambda p: load_client_rules(p, size),
                relay.set_client_rules,
                log,
            )
            relay.rules_reloads = self.client_rules.counts

    def on_sighup(self) -> None:
        """Reload --client-rules at once, and reopen the access log."""
        if self.client_rules is not None:
            self.client_rules.reload()
        super().on_sighup()

    async def start(self) -> dict[str, Any]:
        config, relay = self.config, self.relay
        registry = make_registry(
            "relay",
            lambda: chain(relay.stats.collect(relay), listener.collect()),
            self.readiness.check,
        )
        # The admin port answers first, so a load balancer sees "starting", not a refused port.
        self.admin = await start_admin(*config.admin, registry, self.readiness.check)
        tls = None
        if config.tls_cert is not None and config.tls_key is not None:
            tls = server_context(config.tls_cert, config.tls_key)
        host, port = config.listen
        self.server = await create_ws_server(
            relay.listener_factory,
            host,
            port,
            ssl_context=tls,
            ping_interval=config.ping_interval,
            max_frame_size=config.max_frame_size,
            reuse_port=config.reuse_port,
            on_refused=relay.head_refused,
        )
        listen = bound_address(self.server)
        admin_at = bound_address(self.admin)
        log.info(
            "relay %s listening on %s%s, admin on %s",
            self.instance_id,
            "wss://" if tls else "ws://",
            listen,
            admin_at,
        )
        return {"listen": listen, "admin": admin_at, "instance": self.instance_id}

    def background(self, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        assert self.relay.membership is not None
        tasks = [self.relay.membership.run(stop)]
        if self.client_rules is not None:
            tasks.append(self.client_rules.watch(stop, self.config.client_rules_poll))
        return tasks

    async def drain(self) -> None:
        config, relay = self.config, self.relay
        self.server.close()
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
        assert relay.membership is not None
        await relay.membership.leave()
        await wait_drained(relay, config.drain_timeout)
        if relay.active_streams:
            log.warning("drain timeout (%gs): closing %s", config.drain_timeout, drain_state(relay))

    async def close(self) -> None:
        self.relay.close_all("relay shutting down")
        self.relay.close()
        self.admin.close()
        await asyncio.sleep(CLOSE_LINGER)  # let the CLOSE frames leave


async def wait_drained(relay: Relay, timeout: float) -> None:
    """Until the tunnels are done and the client_a carriers closed, or `timeout`.

    client_a closes a carrier once GOAWAY'd and idle, so an open sent just before our GOAWAY
    reached it still gets its 503 "draining", not a dropped connection.  Each wait is on the
    client connections' ``wait_disconnected()``; progress is logged every few seconds, at most
    DRAIN_REPORTS lines.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    every = max(DRAIN_REPORT_EVERY, timeout / DRAIN_REPORTS)
    next_report = loop.time() + every
    while relay.active_streams or relay.clients:
        now = loop.time()
        if now >= deadline:
            return
        if now >= next_report:
            next_report += every
            log.info(
                "still draining: %s; %.0fs left (Ctrl-C again to stop at once)",
                drain_state(relay),
                deadline - now,
            )
        transports = [
            conn.link.transport
            for conn in relay.clients
            if isinstance(conn.link, Peer) and conn.link.transport is not None
        ]
        if not transports:
            return  # streams end with their client connection: nothing left to wait on
        await all_of((t.wait_disconnected() for t in transports), min(next_report, deadline) - now)
