"""Wires client_a: the HTTP proxy listener, the carrier to the relay, rules
reloading (SIGHUP and file changes) and the admin endpoint."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from itertools import chain
from pathlib import Path
from typing import Any

from client_a.browser import BrowserConnection, ConnectionGate
from client_a.config import ClientConfig
from client_a.pac import PAC_PATH
from client_a.proxy import Proxy
from client_a.rules import PushedRules, Rules, RulesFile, RuleSources, read_rules_file
from fastrelay import metrics
from fastrelay.accesslog import AccessLog
from fastrelay.io import listener
from fastrelay.io.admin import Readiness, start_admin
from fastrelay.io.carrier import Carrier, RelayLink
from fastrelay.io.pool import CarrierPool
from fastrelay.lifecycle import (
    Service,
    bound_address,
    cancel_all,
    serve_service,
)
from fastrelay.reload import FileReloader, load_at_start
from fastrelay.resolver import resolver_metrics

log = logging.getLogger("fastrelay.client")
PAC_ROUTE = PAC_PATH.encode()


class RulesWatcher:
    """The rules client_a routes by, from two sources: its local file (reloaded on SIGHUP and
    when it changes) and the rules the relay pushes (RULES).  Either change rebuilds the
    merged rules and the PAC at once; a bad local file keeps the old rules, and open tunnels
    are never touched."""

    def __init__(self, proxy: Proxy, path: Path | None, sources: RuleSources) -> None:
        self.proxy = proxy
        self.sources = sources
        self.file: FileReloader[RulesFile] | None = None
        if path is not None:
            self.file = FileReloader(path, "rules", read_rules_file, self.set_local, log)

    @property
    def counts(self) -> dict[str, int]:
        """Local file reloads by result."""
        return self.file.counts if self.file is not None else {"ok": 0, "error": 0}

    def set_local(self, local: RulesFile) -> None:
        self._apply(self.sources.set_local(local))
        log.info(
            "rules reloaded from %s: %d patterns", self.file and self.file.path, len(local.entries)
        )

    def set_pushed(self, carrier: Carrier, pushed: PushedRules) -> None:
        held = self.sources.pushed
        if held is not None and held.version == pushed.version:
            return  # the same rules again (another carrier, another relay of the deployment)
        self._apply(self.sources.set_pushed(pushed))
        log.info(
            "relay %s pushed rules version %s: %d rules, %d in effect%s",
            carrier.instance_id,
            pushed.version[:12],
            len(pushed.entries),
            self.sources.pushed_in_effect,
            "" if self.sources.local.pushed else " ([pushed off] in the local file)",
        )

    def _apply(self, rules: Rules) -> None:
        self.proxy.rules = rules
        self.proxy.pac.file(rules)  # regenerate the PAC now, not on the next fetch

    def reload(self) -> None:
        if self.file is not None:
            self.file.reload()

    async def watch(self, stop: asyncio.Event, interval: float) -> None:
        if self.file is not None:
            await self.file.watch(stop, interval)


def load_rules(path: Path | None) -> RuleSources:
    """The rules at start-up. A bad file is a config error (exit 2) whose message names the
    file, the line and the problem, as a reload would log it."""
    if path is None:
        log.warning("no --rules file: every host goes direct (unless the relay pushes rules)")
        return RuleSources()
    return RuleSources(load_at_start("--rules", path, read_rules_file))


async def serve(config: ClientConfig, stop: asyncio.Event) -> int:
    return await serve_service(ClientService(config), stop)


class ClientService(Service):
    """client_a: the HTTP proxy listener, the carriers to the relay, the rules and the
    admin port.  SIGHUP reloads the rules at once and reopens the access log."""

    program = "client"
    name = "client_a"
    log = log

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        if config.access_log is not None:
            self.access_log = AccessLog(config.access_log, config.log_format, "client")
        sources = load_rules(config.rules)
        self.proxy = proxy = Proxy(config, sources.rules, self.access_log)
        self.pool = pool = CarrierPool(
            RelayLink.from_config(config, "client", rules=True),
            proxy,
            proxy.stats.carrier,
            config.carriers,
            open_timeout=config.open_timeout,
        )
        proxy.pool = pool
        self.watcher = watcher = RulesWatcher(proxy, config.rules, sources)
        pool.on_rules = watcher.set_pushed
        self.readiness = Readiness(connected=lambda: bool(pool.ready))

    def on_sighup(self) -> None:
        self.watcher.reload()
        if self.access_log is not None:
            self.access_log.reopen()

    async def start(self) -> dict[str, Any]:
        config, proxy, pool, watcher = self.config, self.proxy, self.pool, self.watcher
        loop = asyncio.get_running_loop()
        gate = ConnectionGate(loop, config.max_connections, config.header_timeout)
        registry = metrics.make_registry(
            "client",
            lambda: chain(
                proxy.stats.collect(pool, watcher.sources, watcher.counts),
                gate.collect(),
                listener.collect(),
                resolver_metrics(proxy.resolver),
            ),
            self.readiness.check,
        )
        self.admin = await start_admin(
            *config.admin, registry, self.readiness.check, routes={PAC_ROUTE: proxy.serve_pac}
        )
        host, port = config.listen
        self.server = await listener.create_server(
            loop, lambda: BrowserConnection(proxy, gate), host, port
        )
        listen = bound_address(self.server)
        bound, _, bound_port = listen.rpartition(":")
        proxy.pac.listen = (bound.strip("[]"), int(bound_port))
        proxy.pac.file(proxy.rules)
        admin_at = bound_address(self.admin)
        log.info(
            "client_a proxy on http://%s (relay %s, %d rules), admin on %s",
            listen,
            config.relay,
            len(proxy.rules),
            admin_at,
        )
        return {"listen": listen, "admin": admin_at, "pac": f"http://{listen}{PAC_PATH}"}

    def background(self, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        return [self.watcher.watch(stop, self.config.rules_poll), self.pool.run(stop)]

    async def drain(self) -> None:
        self.server.close()  # no new browser connections while the carriers wind down

    async def close(self) -> None:
        self.admin.close()
        await cancel_all(self.proxy.tasks)  # opens still in progress
        await self.proxy.resolver.close()
