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
from client_a.rules import RuleError, Rules
from fastrelay import metrics
from fastrelay.accesslog import AccessLog
from fastrelay.config import ConfigError
from fastrelay.io import listener
from fastrelay.io.admin import Readiness, start_admin
from fastrelay.io.carrier import RelayLink
from fastrelay.io.pool import CarrierPool
from fastrelay.lifecycle import (
    Service,
    bound_address,
    cancel_all,
    pause,
    serve_service,
)

log = logging.getLogger("fastrelay.client")
PAC_ROUTE = PAC_PATH.encode()


class RulesWatcher:
    """Reloads the rules on SIGHUP and when the file changes; a bad file keeps
    the old rules (and open tunnels are never touched by a reload)."""

    def __init__(self, proxy: Proxy, path: Path | None) -> None:
        self.proxy = proxy
        self.path = path
        self.stamp = self._stamp()

    def _stamp(self) -> tuple[float, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def reload(self) -> None:
        if self.path is None:
            return
        self.stamp = self._stamp()
        try:
            rules = Rules.load(self.path)
        except (RuleError, OSError) as exc:
            self.proxy.stats.rules_failures += 1
            log.error("rules not reloaded, keeping %d old rules: %s", len(self.proxy.rules), exc)
            return
        self.proxy.rules = rules
        self.proxy.pac.file(rules)  # regenerate the PAC now, not on the next fetch
        self.proxy.stats.rules_reloads += 1
        log.info("rules reloaded from %s: %d patterns", self.path, len(rules))

    async def watch(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            await pause(stop, interval)
            if self._stamp() != self.stamp:
                self.reload()


def load_rules(path: Path | None) -> Rules:
    """The rules at start-up. A bad file is a config error (exit 2) whose message
    names the file, the line and the problem, as a reload would log it."""
    if path is None:
        log.warning("no --rules file: every host goes direct")
        return Rules()
    try:
        return Rules.load(path)
    except RuleError as exc:
        raise ConfigError(f"--rules: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"--rules: cannot read {path}: {exc.strerror}") from None


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
        self.proxy = proxy = Proxy(config, load_rules(config.rules), self.access_log)
        self.pool = pool = CarrierPool(
            RelayLink.from_config(config, "client"),
            proxy,
            proxy.stats.carrier,
            config.carriers,
            open_timeout=config.open_timeout,
        )
        proxy.pool = pool
        self.watcher = RulesWatcher(proxy, config.rules)
        self.readiness = Readiness(connected=lambda: bool(pool.ready))

    def on_sighup(self) -> None:
        self.watcher.reload()
        if self.access_log is not None:
            self.access_log.reopen()

    async def start(self) -> dict[str, Any]:
        config, proxy, pool = self.config, self.proxy, self.pool
        loop = asyncio.get_running_loop()
        gate = ConnectionGate(loop, config.max_connections, config.header_timeout)
        registry = metrics.make_registry(
            "client",
            lambda: chain(
                proxy.stats.collect(pool, len(proxy.rules)), gate.collect(), listener.collect()
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
