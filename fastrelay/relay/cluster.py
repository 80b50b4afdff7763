"""Which relay instances are alive: the set every agent meshes with.

Each relay of a deployment writes a heartbeat key with a TTL to Redis
(`--cluster redis://...`) and reads the others' keys; a key that stops being
refreshed expires, so a relay killed with -9 leaves the set within the TTL
without anyone cleaning up. Small deployments list the instances instead
(`--peers`). Without either, a relay's set is just itself.

If Redis is unreachable the last known set is kept (and counted): agents
keep the connections they have rather than flapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fastrelay.lifecycle import pause
from fastrelay.logs import RateLimitedLog

log = logging.getLogger("fastrelay.cluster")
OnChange = Callable[[tuple[str, ...]], None]


class StaticMembership:
    """A fixed set (`--peers`) plus this instance."""

    def __init__(self, instance_id: str, peers: tuple[str, ...]) -> None:
        self.members = tuple(sorted({instance_id, *peers}))
        self.errors = 0

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()

    async def leave(self) -> None:
        pass


class RedisMembership:
    def __init__(
        self, url: str, namespace: str, instance_id: str, ttl: float, on_change: OnChange
    ) -> None:
        self.prefix = f"{namespace}:relay:"
        self.key = self.prefix + instance_id
        self.instance_id = instance_id
        self.ttl_ms = max(1, int(ttl * 1000))
        self.interval = ttl / 3  # two missed heartbeats still leave the key alive
        self.on_change = on_change
        self.members: tuple[str, ...] = (instance_id,)
        self.errors = 0
        self.leaving = False
        self.error_log = RateLimitedLog(log, period=30.0, burst=2)
        self.client = aioredis.from_url(
            url, socket_timeout=self.interval, socket_connect_timeout=self.interval
        )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and not self.leaving:
            await self.heartbeat()
            await pause(stop, self.interval)

    async def heartbeat(self) -> None:
        try:
            await self.client.set(self.key, self.instance_id, px=self.ttl_ms)
            keys = [k async for k in self.client.scan_iter(match=self.prefix + "*", count=1000)]
        except (RedisError, OSError) as exc:
            self.errors += 1
            self.error_log.warning(
                "cluster membership: Redis unavailable, keeping the last set", error=exc
            )
            return
        found = {k.decode() if isinstance(k, bytes) else k for k in keys}
        members = tuple(sorted({key[len(self.prefix) :] for key in found} | {self.instance_id}))
        if members != self.members:
            log.info("relay instances: %s", ", ".join(members))
            self.members = members
            self.on_change(members)

    async def leave(self) -> None:
        """Draining: drop out of the set at once, so agents stop wanting us."""
        self.leaving = True
        try:
            await self.client.delete(self.key)
        except (RedisError, OSError) as exc:
            self.errors += 1
            log.warning("cluster membership: could not remove %s: %s", self.key, exc)
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()
