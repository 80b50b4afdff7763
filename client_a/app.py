"""Wires client_a: the HTTP proxy listener, the carrier to the relay, rules
reloading (SIGHUP and file changes) and the admin endpoint."""

from __future__ import annotations

import asyncio
import logging
import signal
from itertools import chain
from pathlib import Path

from client_a.browser import BrowserConnection, ConnectionGate
from client_a.config import ClientConfig
from client_a.proxy import Proxy
from client_a.rules import RuleError, Rules
from fastrelay import metrics
from fastrelay.accesslog import AccessLog
from fastrelay.config import ConfigError
from fastrelay.io import listener
from fastrelay.io.admin import Readiness, start_admin
from fastrelay.io.carrier import RelayLink
from fastrelay.io.pool import CarrierPool
from fastrelay.lifecycle import announce_ready, format_address, pause

log = logging.getLogger("fastrelay.client")


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
    loop = asyncio.get_running_loop()
    access_log = None
    if config.access_log is not None:
        access_log = AccessLog(config.access_log, config.log_format, "client")
    proxy = Proxy(config, load_rules(config.rules), access_log)
    pool = CarrierPool(
        RelayLink.from_config(config, "client"),
        proxy,
        proxy.stats.carrier,
        config.carriers,
        open_timeout=config.open_timeout,
    )
    proxy.pool = pool
    watcher = RulesWatcher(proxy, config.rules)

    def on_sighup() -> None:
        watcher.reload()
        if access_log is not None:
            access_log.reopen()

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    readiness = Readiness(connected=lambda: bool(pool.ready))
    gate = ConnectionGate(loop, config.max_connections, config.header_timeout)
    registry = metrics.make_registry(
        "client",
        lambda: chain(
            proxy.stats.collect(pool, len(proxy.rules)), gate.collect(), listener.collect()
        ),
        readiness.check,
    )
    admin = await start_admin(*config.admin, registry, readiness.check)
    host, port = config.listen
    server = await listener.create_server(loop, lambda: BrowserConnection(proxy, gate), host, port)
    readiness.set("ready")
    listen = format_address(server.sockets[0].getsockname())
    admin_at = format_address(admin.sockets[0].getsockname())
    log.info(
        "client_a proxy on http://%s (relay %s, %d rules), admin on %s",
        listen,
        config.relay,
        len(proxy.rules),
        admin_at,
    )
    announce_ready("client", listen=listen, admin=admin_at)
    watch = loop.create_task(watcher.watch(stop, config.rules_poll))
    pool_task = loop.create_task(pool.run(stop))
    await stop.wait()
    readiness.set("draining")
    server.close()  # no new browser connections while the carrier winds down
    await pool_task
    admin.close()
    watch.cancel()
    for task in list(proxy.tasks):
        task.cancel()
    if access_log is not None:
        access_log.close()
    log.info("client_a stopped")
    return 0
