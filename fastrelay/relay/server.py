"""The relay on picows: authentication at the upgrade, then the switch.

Every decision (admission, routing, stream state, credit, limits, agent
health) is made by `fastrelay.protocol.switch.Switch`, which is pure code.
This module carries its actions out: `Peer` (peer.py) hands it each message
with the time, `MuxWriter` writes what it routes, and a timer calls its
`tick` a few times a second. It also records what the switch reports on
opens and closes (latency histograms, the access log, warnings).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from fastrelay.accesslog import AccessLog
from fastrelay.io.httphead import Refusal
from fastrelay.io.mux import FlushScheduler
from fastrelay.logs import RateLimitedLog
from fastrelay.protocol.errors import CLOSE_GOING_AWAY, ProtocolError
from fastrelay.protocol.messages import (
    DEFAULT_POOL,
    FEATURE_RULES,
    FEATURES_HEADER,
    POOL_HEADER,
    OpenStream,
    format_authority,
    pool_error,
)
from fastrelay.protocol.rules import PushedRules
from fastrelay.protocol.seed import SeedStats
from fastrelay.protocol.switch import Conn, Stream, Switch
from fastrelay.relay.cluster import RedisMembership, StaticMembership
from fastrelay.relay.config import RelayConfig
from fastrelay.relay.peer import Peer
from fastrelay.relay.seedpeer import SeedPeer
from fastrelay.relay.stats import RelayStats

log = logging.getLogger("fastrelay.relay")

ROLE_PATHS = {b"/v1/client": "client", b"/v1/agent": "agent", b"/v1/seed": "client"}
SEED_PATH = b"/v1/seed"  # the seed dialect (fastrelay/protocol/seed.py), with client tokens
TICK = 0.1  # seconds between the switch's timeout and liveness checks


class Relay:
    def __init__(
        self, config: RelayConfig, instance_id: str, access_log: AccessLog | None = None
    ) -> None:
        self.config = config
        self.instance_id = instance_id
        self.loop = asyncio.get_running_loop()
        self.scheduler = FlushScheduler(self.loop)
        self.stats = RelayStats()
        self.seed_stats = SeedStats()
        self.seed_peers: dict[SeedPeer, None] = {}  # live seed-dialect connections
        self.switch = Switch(config.limits(), instance_id, observer=self)
        self.membership: StaticMembership | RedisMembership | None = None  # set by the app
        self.auth_log = RateLimitedLog(log)
        self.limit_log = RateLimitedLog(log)
        # One line per connect and per disconnect; under churn a burst, then a summary.
        self.conn_log = RateLimitedLog(log, period=10.0, burst=20, what="connection events")
        self.access_log = access_log
        self._tokens = {
            "client": [t.encode() for t in config.client_tokens],
            "agent": [t.encode() for t in config.agent_tokens],
        }
        self._ticker: asyncio.TimerHandle | None = self.loop.call_later(TICK, self._tick)
        self.client_rules: PushedRules | None = None  # --client-rules, pushed to client_a
        self.rules_reloads = {"ok": 0, "error": 0}  # read from its FileReloader by the app

    # --- the WebSocket upgrade: authentication before any state exists ---

    def listener_factory(
        self, request: WSUpgradeRequest, peer: str
    ) -> WSUpgradeResponseWithListener | None:
        path = request.path.split(b"?", 1)[0]
        role = ROLE_PATHS.get(path)
        if role is None:
            return None  # picows answers 404
        fields = {"role": "seed" if path == SEED_PATH else role, "peer": peer}
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded:  # behind a load balancer the socket peer is the balancer
            fields["forwarded_for"] = forwarded[:200]
        token = self._token_index(role, request.headers.get("authorization"))
        if token is None:
            self.stats.auth_failures[role] += 1
            self.auth_log.warning("rejected WebSocket upgrade: bad or missing token", **fields)
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_error_response(
                    401,
                    b"invalid or missing bearer token\n",
                    extra_headers={"WWW-Authenticate": 'Bearer realm="fastrelay"'},
                ),
                None,
            )
        pool = DEFAULT_POOL
        if role == "agent":
            pool = request.headers.get(POOL_HEADER) or DEFAULT_POOL
            why = pool_error(pool)
            if why is not None:
                self.limit_log.warning(f"refused WebSocket upgrade: {POOL_HEADER}: {why}", **fields)
                return WSUpgradeResponseWithListener(
                    WSUpgradeResponse.create_error_response(
                        400, f"{POOL_HEADER}: {why}\n".encode()
                    ),
                    None,
                )
            fields["pool"] = pool
        refusal = self.switch.admission(role, token, pool)
        if refusal is not None:
            status, message = refusal
            if status != 503 or not self.switch.draining:
                self.limit_log.warning(f"refused WebSocket upgrade: {message}", **fields)
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_error_response(status, message.encode() + b"\n"), None
            )
        # A client_a that asks for RULES (an older one would close on the unknown frame).
        features = (request.headers.get(FEATURES_HEADER) or "").lower()
        rules = role == "client" and FEATURE_RULES in (f.strip() for f in features.split(","))
        listener = (
            SeedPeer(self, peer, token)
            if path == SEED_PATH
            else Peer(self, role, peer, token, pool, rules)
        )
        listener.forwarded_for = fields.get("forwarded_for")
        return WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_101_response(
                extra_headers={"X-Fastrelay-Instance": self.instance_id}
            ),
            listener,
        )

    # --- connection events: logged once each (rate-limited), never per frame ---

    def _peer_fields(self, peer: Peer) -> dict[str, object]:
        fields: dict[str, object] = {
            "role": "seed" if isinstance(peer, SeedPeer) else peer.role,
            "peer": peer.remote,
            "instance": self.instance_id,
        }
        if peer.forwarded_for:
            fields["forwarded_for"] = peer.forwarded_for
        if peer.role == "agent":
            fields["pool"] = peer.pool
        return fields

    def peer_connected(self, peer: Peer) -> None:
        fields = self._peer_fields(peer)
        self.conn_log.info(f"{fields['role']} connected from {peer.remote}", **fields)

    def peer_disconnected(self, peer: Peer, reason: str) -> None:
        fields = self._peer_fields(peer)
        self.conn_log.info(
            f"{fields['role']} disconnected from {peer.remote}: {reason}", **fields, reason=reason
        )

    def head_refused(self, refusal: Refusal, peer: str) -> None:
        """An upgrade head over a limit, answered 431 by the listener (wsserver.py)."""
        self.stats.head_refusals[refusal.kind] += 1
        self.limit_log.warning(f"refused WebSocket upgrade: {refusal.reason}", peer=peer)

    def _token_index(self, role: str, header: str | None) -> int | None:
        """Which configured token the header carries, or None."""
        if not header or header[:7].lower() != "bearer ":
            return None
        offered = header[7:].strip().encode()
        found = None
        for i, token in enumerate(self._tokens[role]):  # every token: no early exit to time
            if hmac.compare_digest(offered, token):
                found = i
        return found

    # --- the switch's clock ---

    def _tick(self) -> None:
        self._ticker = self.loop.call_later(TICK, self._tick)
        self.switch.tick(time.monotonic())
        self.conn_log.flush()

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    # --- what the switch reports (switch.Observer) ---

    def open_answered(self, stream: Stream, seconds: float) -> None:
        self.stats.open_latency.observe(seconds)

    def stream_ended(self, stream: Stream, result: str, seconds: float) -> None:
        if result in ("ok", "aborted"):
            self.stats.stream_duration.observe(seconds)
        if self.access_log is not None:
            self.access_log.write(
                session=stream.session_id,
                client=stream.client.remote,
                target=stream.target,
                route="relay",
                result=result,
                # No per-tunnel bytes here: counting them cost ~25 ns per
                # forwarded frame (6 % at 100-byte frames, bench/micro
                # test_forward_bench.py); client_a's and the agent's lines
                # for the same session have them.
                bytes_up=None,
                bytes_down=None,
                duration=seconds,
                agent=stream.agent.remote,
            )

    def open_refused(self, client: Conn, request: OpenStream, result: str) -> None:
        if self.access_log is not None:
            self.access_log.write(
                session=request.session_id,
                client=client.remote,
                target=format_authority(request.host, request.port),
                route="relay",
                result=result,
                bytes_up=None,
                bytes_down=None,
            )

    def conn_failed(self, conn: Conn, exc: ProtocolError) -> None:
        log.warning(
            "closing %s connection from %s: %s",
            "seed" if isinstance(conn.link, SeedPeer) else conn.role,
            conn.remote,
            exc,
            extra={"fields": {"kind": exc.kind}},
        )

    # --- for the app and the metrics ---

    @property
    def clients(self) -> list[Conn]:
        return list(self.switch.clients)

    @property
    def agents(self) -> list[Conn]:
        return list(self.switch.agents)

    @property
    def active_streams(self) -> int:
        return self.switch.active_streams

    def set_members(self, members: tuple[str, ...]) -> None:
        self.switch.set_members(members)

    def set_client_rules(self, pushed: PushedRules) -> None:
        """Push `pushed` to every client_a that asked for rules, now and on each connect."""
        old = self.client_rules
        self.client_rules = pushed
        if old is not None and old.version == pushed.version:
            log.info("--client-rules reloaded: unchanged (version %s)", pushed.version[:12])
            return
        self.switch.set_rules(pushed.encode())
        asked = sum(1 for conn in self.switch.clients if conn.rules)
        log.info(
            "client rules version %s: %d rules, pushed to %d client_a",
            pushed.version[:12],
            len(pushed.entries),
            asked,
        )

    def membership_errors(self) -> int:
        return 0 if self.membership is None else self.membership.errors

    def start_draining(self) -> None:
        self.switch.start_draining()

    def close_all(self, reason: str) -> None:
        for conn in [*self.switch.clients, *self.switch.agents]:
            conn.link.close(CLOSE_GOING_AWAY, reason)
