"""The relay's decisions as pure code: the switch.

Bytes and events go in, actions come out. There are no sockets, no asyncio and
no clock reads here: the caller passes `now` (monotonic seconds), and carries
out the actions through two small objects that every connection brings:

* `Conn.out.write(frames)` queues whole mux frames for that connection (an
  `Output`: the relay's `MuxWriter`; a queue in the in-memory pair, `pair.py`);
* `Conn.link.close(code, reason)` closes the connection with a WebSocket close
  code, and `Conn.link.ping()` sends a liveness probe.

What the switch decides:

* **Admission.** Connections per token and in total (`admission`, `attach`),
  and a stream-id range for every client_a connection.
* **Routing.** Every frame of a message from one connection (`receive`): data is
  forwarded as slices of the received message, control frames drive the
  stream's state through `state.next_state`, the one transition table.
* **Credit.** The relay keeps each direction of each stream within the credit
  its receiver granted (the window of the open or CONNECT_RESPONSE plus every
  WINDOW_UPDATE). A sender that exceeds it loses that stream
  (`flow_control`), so what the relay holds for a connection is bounded by
  the credit that connection granted. A connection whose queued bytes pass
  `Limits.connection_buffer` anyway (it granted more than it reads) is cut off
  (`over_budget`, close 1008). Nothing ever pauses a shared connection.
* **Pools.** Every agent is in one pool (named at its upgrade), every open
  names one (`OpenStream.pool`), and an open only ever reaches an agent of
  its pool: `pools` maps a pool to its agents, so picking costs a walk of
  that pool's agents, not of every agent. An open for a pool without a
  serving agent gets 503 `no_agent_in_pool`. The number of pools is capped
  (`Limits.max_pools`): they label metrics, so the set must stay bounded.
* **Limits.** Streams per connection, opens in flight per agent: an open over
  a limit gets CONNECT_RESPONSE 503 with a `reason`.
* **Tenants.** A client token is a tenant, however many connections it holds.
  While two or more client tokens are connected, each may hold at most
  `Limits.token_share` of an agent's streams and of its opens in flight
  (`Share`), so one tenant's dials that never answer, or its idle tunnels,
  leave room at every agent for the others' opens (`token_share`, 503). A
  token alone on the relay may use every agent in full.
* **Agent health.** Opens in flight count as load; an agent that owes an
  answer and stays silent is probed with a ping and, if the probe goes
  unanswered, gets no new opens and its pending opens move to another agent
  (`tick`); an open unanswered for `open_retry_after` moves once too.

The data path (`receive`'s loop) allocates nothing but the slices it forwards:
a TUNNEL_DATA frame for a known stream with enough credit costs one dict
look-up and one subtraction. Every other frame goes through `read_frame`, the
codec's one frame walker, so every vector in docs/PROTOCOL.md holds here too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

try:
    import cython  # type: ignore[import-untyped]  # compiled: a constant; else the shadow module
except ImportError:  # installed without Cython: interpreted
    _COMPILED = False
else:
    _COMPILED = cython.compiled

from fastrelay.protocol.errors import (
    CLOSE_TRY_AGAIN_LATER,
    BudgetExceeded,
    FlowControlError,
    MessageTooBig,
    ProtocolError,
    StreamError,
)
from fastrelay.protocol.frames import (
    FRAME_TYPES,
    HEADER_SIZE,
    MAX_PAYLOAD,
    OPEN_FRAMES,
    T_CONNECT,
    T_CONNECT_RESPONSE,
    T_GOAWAY,
    T_HELLO,
    T_MEMBERS,
    T_PROBE,
    T_RULES,
    T_TUNNEL_DATA,
    T_TUNNEL_ERROR,
    T_WINDOW_UPDATE,
    FrameType,
    decode_window_increment,
    encode_probe_answer,
    read_frame,
    read_header,
)
from fastrelay.protocol.messages import (
    DEFAULT_POOL,
    ConnectResponse,
    GoAway,
    Hello,
    Members,
    OpenStream,
    TunnelError,
    format_authority,
)
from fastrelay.protocol.output import Output
from fastrelay.protocol.rules import PushedRules
from fastrelay.protocol.state import ACCEPTS_DATA_DOWN, ACCEPTS_DATA_UP, Event, State, next_state
from fastrelay.protocol.status import Failure, failure_of

# Stream ids are u32. Each client_a connection owns a range of 2**16 of them,
# so ids are unique relay-wide and frames cross the relay without rewriting.
SLOT_BITS = 16
SLOT_SIZE = 1 << SLOT_BITS
SLOT_COUNT = 1 << (32 - SLOT_BITS)  # slot 0 is never handed out: stream id 0 is the connection
MAX_CREDIT = 2**31 - 1
# An open in flight weighs this many established streams when picking an agent.
OPEN_WEIGHT = 8
# The `pool` label of opens for a pool no agent ever joined (client_a's choice,
# not a name an agent authenticated with: it never becomes a label of its own).
UNKNOWN_POOL = "_unknown"
# Destinations whose "host:port" strings the switch shares between streams.
TARGETS_SHARED = 4096

_OPENING = frozenset({State.REQUEST, State.CONNECT_REQUEST})
# Enum members as module names for the functions below (as `T_TUNNEL_DATA`): on
# Python 3.11 `Enum.MEMBER` in a function goes through EnumType.__getattr__'s slot
# hook, ~850 instructions compiled; a module global is a dict look-up.
_S_REQUEST = State.REQUEST
_S_CONNECT_REQUEST = State.CONNECT_REQUEST
_S_CLOSED = State.CLOSED
_E_RESPONSE_OK = Event.RESPONSE_OK
_E_RESPONSE_FAIL = Event.RESPONSE_FAIL
_E_WINDOW_UP = Event.WINDOW_UP
_E_WINDOW_DOWN = Event.WINDOW_DOWN
_E_FIN_UP = Event.FIN_UP
_E_FIN_DOWN = Event.FIN_DOWN
_E_DATA_UP = Event.DATA_UP
_E_DATA_DOWN = Event.DATA_DOWN
_E_ABORT = Event.ABORT
_E_TIMEOUT = Event.TIMEOUT
# C integers when compiled (switch.pxd), for receive's per-frame arithmetic.
_HEADER_SIZE = HEADER_SIZE
_SLOT_BITS = SLOT_BITS


@dataclass(frozen=True)
class Limits:
    """Every bound the switch enforces (the relay's config builds one)."""

    max_message: int = 1024 * 1024  # largest WebSocket message routed (--max-frame-size)
    connection_buffer: int = 64 * 1024 * 1024  # bytes queued for one connection
    streams_per_connection: int = 1024  # at one client_a connection
    streams_per_agent: int = 16384  # at one agent connection (it carries every client's)
    connections: int = 16384
    connections_per_token: int = 256
    opens_per_agent: int = 1024  # dials in flight at one agent
    opens_per_connection: int = 256  # opens in flight from one client_a connection
    connect_timeout: float = 10.0  # open to CONNECT_RESPONSE, else 504
    open_retry_after: float = 2.0  # an unanswered open moves to another agent once
    probe_after: float = 0.5  # an agent that owes an answer and is this quiet gets a ping
    stall_timeout: float = 1.0  # an unanswered probe this old: the agent is stalled
    max_pools: int = 64  # distinct agent pools (the default one included)
    # The largest share of one agent's streams, and of its opens in flight, that one
    # client token may hold while another client token is connected too (1: no cap
    # below the agent's own limits).
    token_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.connections < SLOT_COUNT:
            raise ValueError(f"connections must be 1..{SLOT_COUNT - 1} (stream-id ranges)")
        if self.streams_per_connection > SLOT_SIZE - 1:
            raise ValueError(f"streams_per_connection must be at most {SLOT_SIZE - 1}")
        if self.streams_per_agent < self.streams_per_connection:
            raise ValueError("streams_per_agent must be at least streams_per_connection")
        if self.max_message > MAX_PAYLOAD:
            raise ValueError(f"max_message must be at most {MAX_PAYLOAD}")
        if self.max_pools < 1:
            raise ValueError("max_pools must be at least 1")
        if not 0 < self.token_share <= 1:
            raise ValueError("token_share must be greater than 0 and at most 1")

    @property
    def token_streams(self) -> int:
        """Streams one client token may hold at one agent."""
        return max(1, int(self.streams_per_agent * self.token_share))

    @property
    def token_opens(self) -> int:
        """Opens in flight one client token may hold at one agent."""
        return max(1, int(self.opens_per_agent * self.token_share))


class Link(Protocol):
    def close(self, code: int, reason: str) -> None: ...
    def ping(self) -> None: ...


class Observer(Protocol):
    """What the adapter records or logs; called on opens and closes, never per frame."""

    def open_answered(self, stream: Stream, seconds: float) -> None: ...
    def stream_ended(self, stream: Stream, result: str, seconds: float) -> None: ...
    def open_refused(self, client: Conn, request: OpenStream, result: str) -> None: ...
    def conn_failed(self, conn: Conn, exc: ProtocolError) -> None: ...


class NullObserver:
    def open_answered(self, stream: Stream, seconds: float) -> None:
        pass

    def stream_ended(self, stream: Stream, result: str, seconds: float) -> None:
        pass

    def open_refused(self, client: Conn, request: OpenStream, result: str) -> None:
        pass

    def conn_failed(self, conn: Conn, exc: ProtocolError) -> None:
        pass


class Conn:
    """One WebSocket (a client_a or an agent) as the switch sees it."""

    __slots__ = (
        "attached",
        "carried",
        "data_bytes",
        "data_frames",
        "draining",
        "failed",
        "id_base",
        "is_client",
        "last_rx",
        "link",
        "opening",
        "out",
        "pool",
        "probation",
        "probe_at",
        "remote",
        "role",
        "rules",
        "shares",
        "stalled",
        "streams",
        "token",
    )

    def __init__(
        self,
        role: str,
        out: Output,
        link: Link,
        token: int = 0,
        remote: str = "",
        pool: str = DEFAULT_POOL,
        rules: bool = False,
    ) -> None:
        self.role = role
        self.pool = pool  # an agent's pool (client_a connections name one per open)
        self.rules = rules and role == "client"  # a client_a that asked for RULES
        self.is_client = role == "client"
        self.out = out
        self.link = link
        self.token = token  # which configured token it authenticated with
        self.remote = remote  # the socket's peer address, for logs
        # client_a: sid -> the streams it opened. An agent's streams are found
        # through their client_a's (`Switch.owners`): one entry per stream, not two.
        self.streams: dict[int, Stream] = {}
        self.carried = 0  # an agent: the streams it carries
        self.shares: dict[object, Share] = {}  # an agent: client token -> what it holds here
        self.opening: dict[Stream, None] = {}  # opens sent (client_a) or given (agent), unanswered
        self.id_base = 0
        self.attached = False
        self.failed = False  # closed for a protocol error or a limit: nothing more is routed
        self.draining = False  # sent GOAWAY: no new streams
        self.data_bytes = 0  # TUNNEL_DATA payload bytes received from this connection
        self.data_frames = 0
        self.last_rx = 0.0  # when anything last arrived (a message or a pong)
        self.probe_at = 0.0  # when an unanswered liveness ping went out (0: none)
        self.stalled = False  # the probe went unanswered: no new opens
        self.probation = False  # an open timed out or moved away: one open in flight at most

    def __repr__(self) -> str:
        count = len(self.streams) if self.is_client else self.carried
        return f"<Conn {self.role} {self.pool} {self.remote} streams={count}>"


class Stream:
    """One open stream at the relay, with the credit each way.

    `up_room` is the credit the agent granted for client_a's data and
    `down_room` the credit client_a granted for the agent's, while the
    stream's state lets that direction carry data, and -1 otherwise (before
    the open succeeded, after the direction's FIN, once closed): one
    comparison checks both. Credit granted while a direction cannot carry
    data waits in `up_held` / `down_held`.

    An idle one costs ~0.23 KB with its ids and its entry in client_a's
    `Conn.streams` (bench scenario 5; tests/protocol/test_switch_memory.py).
    So the credit sits in the stream itself, not in an object per direction
    (one was 64 bytes each); what only an unanswered open needs is in
    `Switch.opening` (`Pending`); the session id is kept as a number when it
    is a UUID (`_compact_session`); no field holds a container of its own;
    `target` is shared between streams to the same destination
    (`Switch.targets`). Its pool is its agent's (`agent.pool`): an open only
    ever reaches an agent of the pool it names.
    """

    __slots__ = (
        "agent",
        "client",
        "down_held",
        "down_room",
        "opened_at",
        "session",
        "sid",
        "state",
        "target",
        "up_held",
        "up_room",
    )

    def __init__(
        self,
        sid: int,
        request: OpenStream,
        client: Conn,
        agent: Conn,
        now: float,
        target: str,
    ) -> None:
        self.sid = sid
        self.session = _compact_session(request.session_id)
        self.target = target  # "host:port", for the access log
        self.client = client
        self.agent = agent
        self.state = _S_CONNECT_REQUEST if request.kind == T_CONNECT else _S_REQUEST
        self.up_room = -1  # client_a -> agent, on the agent's credit
        self.up_held = 0
        self.down_room = -1  # agent -> client_a, on client_a's credit
        self.down_held = request.window
        self.opened_at = now

    @property
    def session_id(self) -> str:
        """The open's sessionId, as client_a sent it."""
        session = self.session
        if isinstance(session, str):
            return session
        h = f"{session:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    @property
    def live(self) -> bool:
        """Not ended yet (`Switch._end` takes it out of client_a's `streams`)."""
        return self.client.streams.get(self.sid) is self


class Share:
    """What one client token holds at one agent (`Conn.shares`): its streams
    there, opens included, and its opens in flight. Kept at 0 (not made and
    dropped per open): there are at most as many as configured client tokens."""

    __slots__ = ("opens", "streams")

    def __init__(self) -> None:
        self.streams = 0
        self.opens = 0


class Pending:
    """What an unanswered open needs for a retry (`Switch.opening`), dropped
    once it is answered: an idle stream carries none of it."""

    __slots__ = ("frame", "retried", "sent_at")

    def __init__(self, frame: bytes, now: float) -> None:
        self.frame = frame  # the open as client_a sent it: a retry sends it again
        self.sent_at = now  # when the current agent got it
        self.retried = False


def _compact_session(session_id: str) -> str | int:
    """A sessionId in the canonical text form of a UUID (lowercase, what
    client_a sends) as its 128-bit value: an int of 48 bytes, where the
    string is 96, on every open stream (bench scenario 5). Anything else is
    kept as it came. `Stream.session_id` gives back the same text: only the
    form that formatting the value reproduces exactly is compacted (lower-case
    hex digits, dashes where str(uuid) puts them)."""
    if len(session_id) != 36:
        return session_id
    if not _COMPILED:
        # Interpreted, a few C calls beat a loop over 36 characters (~0.7 against ~3 µs).
        if session_id[8] + session_id[13] + session_id[18] + session_id[23] != "----":
            return session_id
        digits = session_id.replace("-", "")
        try:
            raw = bytes.fromhex(digits)  # skips whitespace, takes upper case
        except ValueError:
            return session_id
        return int.from_bytes(raw, "big") if len(raw) == 16 and digits.islower() else session_id
    # Compiled, the loop runs on C integers (~2k instructions; those calls cost 6k).
    hi = lo = 0  # the first 16 hex digits, the last 16
    for i in range(36):
        code = ord(session_id[i])
        if i == 8 or i == 13 or i == 18 or i == 23:
            if code != 45:  # "-"
                return session_id
            continue
        if 48 <= code <= 57:  # 0-9
            digit = code - 48
        elif 97 <= code <= 102:  # a-f
            digit = code - 87
        else:
            return session_id
        if i < 18:
            hi = hi << 4 | digit
        else:
            lo = lo << 4 | digit
    high = hi  # a Python int when compiled: the shift below is past 64 bits
    return high << 64 | lo


class StreamIdSlots:
    """Hands out id ranges round-robin, so a freed range is reused as late as
    possible and stale frames for an old connection's streams find nothing."""

    def __init__(self, count: int = SLOT_COUNT) -> None:
        self.count = count
        self.used: set[int] = set()
        self.next = 1

    def acquire(self) -> int | None:
        """The base stream id of a free range, or None when all are taken."""
        for _ in range(self.count - 1):
            slot = self.next
            self.next = slot + 1 if slot + 1 < self.count else 1
            if slot not in self.used:
                self.used.add(slot)
                return slot << SLOT_BITS
        return None

    def release(self, base: int) -> None:
        self.used.discard(base >> SLOT_BITS)


class SwitchStats:
    """Plain counters; the relay exports them at scrape time."""

    def __init__(self) -> None:
        self.results: Counter[str] = Counter()
        self.protocol_errors: Counter[str] = Counter()
        self.limits: Counter[str] = Counter()  # refusals and cut-offs, by limit
        self.connections_opened: Counter[str] = Counter({"client": 0, "agent": 0})
        self.connections_closed: Counter[str] = Counter({"client": 0, "agent": 0})
        # Opens by (pool, result): pools agents joined, else UNKNOWN_POOL.
        self.pool_results: Counter[tuple[str, str]] = Counter()
        self.dropped_unknown_stream = 0
        self.open_retries = 0  # opens moved to another agent
        self.agent_stalls = 0  # agents that stopped answering probes
        self.closed_bytes = {"client": 0, "agent": 0}  # of connections that ended
        self.closed_frames = {"client": 0, "agent": 0}


class Switch:
    def __init__(self, limits: Limits, instance_id: str, observer: Observer | None = None) -> None:
        self.limits = limits
        self.max_message = limits.max_message  # a C integer when compiled: read per message
        self.instance_id = instance_id
        self.observer: Observer = observer if observer is not None else NullObserver()
        self.stats = SwitchStats()
        self.clients: dict[Conn, None] = {}
        self.agents: list[Conn] = []
        # pool -> its agents. A pool stays once an agent joined it (its
        # metrics go on), up to Limits.max_pools; "default" is always one.
        self.pools: dict[str, list[Conn]] = {DEFAULT_POOL: []}
        self.per_token: Counter[tuple[str, int]] = Counter()
        self.token_streams = limits.token_streams  # C integers when compiled: read per open
        self.token_opens = limits.token_opens
        self.share_capped = False  # the last `_pick` skipped an agent for the token's share
        self.client_tokens = 0  # distinct client tokens connected: shares apply from 2
        self.slots = StreamIdSlots()
        # A stream-id range's index (sid >> SLOT_BITS) -> the client_a that holds it:
        # how a frame from an agent finds its stream (512 KiB, once per relay).
        self.owners: list[Conn | None] = [None] * SLOT_COUNT
        self.opening: dict[Stream, Pending] = {}  # every unanswered open, oldest first
        # "host:port" -> itself: streams to one destination share one string (an idle
        # stream's largest field after its session id); cleared when full.
        self.targets: dict[str, str] = {}
        self.members: tuple[str, ...] = (instance_id,)
        self.draining = False
        self.turn = 0
        # The RULES frame (--client-rules) every client_a that asked for it gets after HELLO
        # and again on each change; None: this relay pushes no rules.
        self.rules_frame: bytes | None = None

    # --- connections ---

    def admission(self, role: str, token: int, pool: str = DEFAULT_POOL) -> tuple[int, str] | None:
        """At the upgrade: None to accept, or (HTTP status, message) to refuse."""
        limits = self.limits
        if self.draining:
            return 503, "relay is shutting down"
        if role == "agent" and pool not in self.pools and len(self.pools) >= limits.max_pools:
            self.stats.limits["pools"] += 1
            return (
                503,
                f"relay serves at most {limits.max_pools} agent pools (--max-pools); "
                f"pool {pool!r} would be one more",
            )
        if len(self.clients) + len(self.agents) >= limits.connections:
            self.stats.limits["connections"] += 1
            return 503, f"relay is at its connection limit ({limits.connections})"
        if self.per_token[role, token] >= limits.connections_per_token:
            self.stats.limits["connections_per_token"] += 1
            return (
                429,
                f"too many connections for this token (limit {limits.connections_per_token})",
            )
        return None

    def attach(self, conn: Conn, now: float) -> bool:
        """The WebSocket is open: register it and send HELLO. False if a limit
        was reached since the upgrade (the connection was closed with 1013)."""
        refusal = self.admission(conn.role, conn.token, conn.pool)
        base = self.slots.acquire() if conn.is_client and refusal is None else 0
        if refusal is None and base is None:
            refusal = 503, "no stream id range free"
        if refusal is not None:
            conn.failed = True
            conn.link.close(CLOSE_TRY_AGAIN_LATER, refusal[1])
            return False
        conn.attached = True
        conn.last_rx = now
        self.per_token[conn.role, conn.token] += 1
        if conn.is_client and self.per_token[conn.role, conn.token] == 1:
            self.client_tokens += 1
        self.stats.connections_opened[conn.role] += 1
        limits = self.limits
        if conn.is_client:
            assert base is not None
            conn.id_base = base
            self.owners[base >> SLOT_BITS] = conn
            self.clients[conn] = None
            hello = Hello(
                self.instance_id,
                stream_id_base=base,
                stream_id_count=SLOT_SIZE,
                buffer_budget=limits.connection_buffer,
                max_streams=limits.streams_per_connection,
                max_frame_size=limits.max_message,
                probe=True,
            )
            conn.out.write(hello.encode())
            if conn.rules and self.rules_frame is not None:
                conn.out.write(self.rules_frame)
        else:
            self.agents.append(conn)
            self.pools.setdefault(conn.pool, []).append(conn)
            hello = Hello(
                self.instance_id,
                buffer_budget=limits.connection_buffer,
                max_streams=limits.streams_per_agent,
                max_frame_size=limits.max_message,
                pool=conn.pool,
                probe=True,
            )
            conn.out.write(hello.encode())
            conn.out.write(Members(self.members).encode())
        if self.draining:
            conn.out.write(GoAway("relay is shutting down").encode())
        return True

    def detach(self, conn: Conn, now: float) -> None:
        """The WebSocket is gone: end its streams and forget it."""
        if not conn.attached:
            return
        conn.attached = False
        conn.failed = True
        self._release(
            conn, now, "client_a disconnected" if conn.is_client else "agent disconnected"
        )
        self.per_token[conn.role, conn.token] -= 1
        if not self.per_token[conn.role, conn.token]:
            del self.per_token[conn.role, conn.token]
            if conn.is_client:
                self.client_tokens -= 1
        self.stats.connections_closed[conn.role] += 1
        self.stats.closed_bytes[conn.role] += conn.data_bytes
        self.stats.closed_frames[conn.role] += conn.data_frames
        conn.data_bytes = conn.data_frames = 0
        if conn.is_client:
            self.owners[conn.id_base >> SLOT_BITS] = None
            self.slots.release(conn.id_base)

    def fail(self, conn: Conn, exc: ProtocolError, now: float) -> None:
        """Close `conn`, and only `conn`, with the code its error carries."""
        if conn.failed:
            return
        conn.failed = True
        self.stats.protocol_errors[exc.kind] += 1
        self.observer.conn_failed(conn, exc)
        conn.link.close(exc.close_code, str(exc)[:120])
        self._release(conn, now, f"{conn.role} connection closed: {exc.kind}")

    def over_budget(self, conn: Conn, queued: int, now: float) -> None:
        """The adapter's report that `conn`'s write buffer passed the budget."""
        if queued <= self.limits.connection_buffer or conn.failed:
            return
        self.stats.limits["connection_buffer"] += 1
        exc = BudgetExceeded(
            f"{queued} bytes queued for this connection, over the relay's budget of "
            f"{self.limits.connection_buffer}"
        )
        self.fail(conn, exc, now)

    def heard(self, conn: Conn, now: float) -> None:
        """Something other than a message arrived (a pong): the peer is alive."""
        conn.last_rx = now

    def _release(self, conn: Conn, now: float, reason: str) -> None:
        if conn.is_client:
            self.clients.pop(conn, None)
        elif conn in self.agents:
            self.agents.remove(conn)
            self.pools[conn.pool].remove(conn)
        for stream in self._streams_of(conn):
            if not stream.live:
                continue  # ended meanwhile (a write above cut its other end off)
            # An open the agent never answered: client_a has been told nothing yet.
            pending = None if conn.is_client else self.opening.get(stream)
            if pending is not None and not pending.retried and self._move(stream, now):
                continue
            other = stream.agent if conn.is_client else stream.client
            self._send(other, TunnelError(stream.session_id, reason).encode(stream.sid))
            self._end(stream, _E_ABORT, now)

    def set_members(self, members: tuple[str, ...]) -> None:
        """The live relay set changed: every agent hears it (its mesh follows)."""
        if members == self.members:
            return
        self.members = members
        frame = Members(members).encode()
        for agent in self.agents:
            self._send(agent, frame)

    def set_rules(self, frame: bytes) -> None:
        """New pushed rules (an encoded RULES frame): every client_a that asked hears them."""
        if frame == self.rules_frame:
            return
        self.rules_frame = frame
        for client in self.clients:
            if client.rules:
                self._send(client, frame)

    def start_draining(self) -> None:
        self.draining = True
        goaway = GoAway("relay is shutting down").encode()
        for conn in [*self.clients, *self.agents]:
            self._send(conn, goaway)

    @property
    def active_streams(self) -> int:
        return sum(len(c.streams) for c in self.clients)

    def _streams_of(self, conn: Conn) -> list[Stream]:
        """The streams `conn` sends on. An agent's are in every client_a's
        `streams`: a walk of all streams, on an agent's disconnect only."""
        if conn.is_client:
            return list(conn.streams.values())
        return [s for c in self.clients for s in c.streams.values() if s.agent is conn]

    def _stream(self, src: Conn, sid: int) -> Stream | None:
        """Stream `sid` if `src` sends on it (`receive` inlines this)."""
        if src.is_client:
            return src.streams.get(sid)
        owner = self.owners[sid >> SLOT_BITS]  # the client_a whose range it is in
        if owner is None:
            return None
        stream = owner.streams.get(sid)
        return stream if stream is not None and stream.agent is src else None

    # --- the hot path ---

    def receive(self, src: Conn, message: memoryview, now: float) -> None:
        """Handle every mux frame of one WebSocket message from `src`.

        Consecutive TUNNEL_DATA frames bound for the same connection leave as
        one slice of the message (one write, and no copy once the run reaches
        the writer's `LARGE_FRAME`, 64 KiB). A malformed frame closes `src`
        alone; the frames before it were valid and are passed on.
        """
        if src.failed:
            return  # closed already: nothing it still sends is routed
        total = len(message)
        if total > self.max_message:
            self.fail(
                src,
                MessageTooBig(f"message of {total} bytes, limit {self.max_message}"),
                now,
            )
            return
        src.last_rx = now
        streams = src.streams  # client_a's own; an agent's are in their client_a's
        owners = self.owners
        shift = _SLOT_BITS
        is_client = src.is_client
        offset = 0
        run_out: Output | None = None  # the open run: message[run_start:offset] goes there
        run_start = 0
        data_bytes = data_frames = 0
        try:
            while offset < total:
                if total - offset >= _HEADER_SIZE:
                    frame_type, _flags, sid, length = read_header(message, offset)
                    end = offset + _HEADER_SIZE + length
                    if frame_type == T_TUNNEL_DATA and end <= total:
                        # Upstream on the agent's credit, downstream on client_a's
                        # (as `_stream`; `slot` is a C integer when compiled).
                        room = -1
                        if is_client:
                            stream = streams.get(sid)
                            if stream is not None:
                                room = stream.up_room - length
                                if room >= 0:
                                    stream.up_room = room
                                    out = stream.agent.out
                        else:
                            slot = sid
                            owner = owners[slot >> shift]
                            if owner is not None:
                                stream = owner.streams.get(sid)
                                if stream is not None and stream.agent is src:
                                    room = stream.down_room - length
                                    if room >= 0:
                                        stream.down_room = room
                                        out = stream.client.out
                        if room >= 0:
                            if out is not run_out:
                                if run_out is not None:
                                    run_out.write(message[run_start:offset])
                                run_out, run_start = out, offset
                            data_bytes += length
                            data_frames += 1
                            offset = end
                            continue
                # Anything else goes through the codec's walker, in order.
                if run_out is not None:
                    run_out.write(message[run_start:offset])
                    run_out = None
                offset = self._frame(src, message, offset, now)
                if src.failed:
                    return
        except ProtocolError as exc:
            if run_out is not None:  # the frames before the bad one were valid
                run_out.write(message[run_start:offset])
                run_out = None
            self.fail(src, exc, now)
        finally:
            if run_out is not None:
                if run_start == 0 and offset == total:  # the whole message: no slice to make
                    run_out.write(message)
                else:
                    run_out.write(message[run_start:offset])
            src.data_bytes += data_bytes
            src.data_frames += data_frames

    # --- everything but forwarded data ---

    def _frame(self, src: Conn, message: memoryview, offset: int, now: float) -> int:
        """One frame the fast path did not take; returns the next offset."""
        frame_type, _flags, sid, start, end = read_frame(message, offset)
        if frame_type == T_TUNNEL_DATA:
            self._refused_data(src, sid, end - start, now)
            return end
        if frame_type in OPEN_FRAMES:
            self._open(
                src, FRAME_TYPES[frame_type], sid, message[start:end], message[offset:end], now
            )
            return end
        payload = message[start:end]
        # Every payload is decoded before the stream is looked up, so a
        # malformed one closes the connection whether or not its stream lives.
        if frame_type == T_WINDOW_UPDATE:
            increment = decode_window_increment(payload)
        elif frame_type == T_CONNECT_RESPONSE:
            response = ConnectResponse.decode(payload)
        elif frame_type == T_TUNNEL_ERROR:
            TunnelError.decode(payload)
        elif frame_type == T_HELLO:
            Hello.decode(payload)  # peers may announce themselves; the version must match
            return end
        elif frame_type == T_GOAWAY:
            GoAway.decode(payload)
            src.draining = True
            return end
        elif frame_type == T_MEMBERS:
            Members.decode(payload)  # only relays send it; nothing to do with one
            return end
        elif frame_type == T_RULES:
            PushedRules.decode(payload)  # as MEMBERS: only relays send it; nothing to do
            return end
        elif frame_type == T_PROBE:
            # An endpoint times its path (docs/PROTOCOL.md §10): the answer queues
            # behind what the relay holds for it, stamped with when the probe was read.
            self._send(src, encode_probe_answer(payload, int(now * 1_000_000)))
            return end
        stream = self._stream(src, sid)
        if stream is None:
            self.stats.dropped_unknown_stream += 1
            return end
        raw = message[offset:end]
        try:
            if frame_type == T_WINDOW_UPDATE:
                # Credit from client_a is for downstream data, from the agent for upstream.
                self._apply(stream, _E_WINDOW_DOWN if src.is_client else _E_WINDOW_UP)
                _grant(stream, not src.is_client, increment)
                self._send(stream.agent if src.is_client else stream.client, raw)
            elif frame_type == T_CONNECT_RESPONSE:
                self._answer(src, stream, response, raw, now)
            elif frame_type == T_TUNNEL_ERROR:
                self._send(stream.agent if src.is_client else stream.client, raw)
                self._end(stream, _E_ABORT, now)
            else:  # FIN
                self._apply(stream, _E_FIN_UP if src.is_client else _E_FIN_DOWN)
                self._send(stream.agent if src.is_client else stream.client, raw)
                if stream.state is _S_CLOSED:
                    self._end(stream, None, now)
        except StreamError as exc:
            self._abort(stream, exc, now)
        return end

    def _refused_data(self, src: Conn, sid: int, length: int, now: float) -> None:
        """TUNNEL_DATA the fast path did not forward: no such stream, a state
        that carries no data this way, or more than the receiver's credit."""
        stream = self._stream(src, sid)
        if stream is None:
            self.stats.dropped_unknown_stream += 1
            return
        accepts = ACCEPTS_DATA_UP if src.is_client else ACCEPTS_DATA_DOWN
        if stream.state in accepts:
            room = stream.up_room if src.is_client else stream.down_room
            exc = FlowControlError(f"{length} bytes of data with {room} bytes of credit")
            self._abort(stream, exc, now)
            return
        try:
            next_state(stream.state, _E_DATA_UP if src.is_client else _E_DATA_DOWN)
        except StreamError as illegal:
            # Aborted here, where Python drops `illegal` on leaving the block: kept in a
            # local, it would hold its traceback, which holds this frame, which holds it
            # (a cycle, with the stream in it, for the garbage collector).
            self._abort(stream, illegal, now)

    def _open(
        self,
        src: Conn,
        kind: FrameType,
        sid: int,
        payload: memoryview,
        raw: memoryview,
        now: float,
    ) -> None:
        if not src.is_client:
            raise ProtocolError(f"agents do not open streams (got {kind.name})")
        request = OpenStream.decode(kind, payload)
        if not src.id_base <= sid < src.id_base + SLOT_SIZE:
            raise ProtocolError(f"stream id {sid} is outside the range this relay assigned")
        if sid in src.streams:
            raise ProtocolError(f"stream id {sid} is already open")
        limits = self.limits
        refusal: Failure | None = None
        why = ""
        agent = None
        if self.draining:
            refusal, why = Failure.DRAINING, "relay is shutting down"
        elif len(src.streams) >= limits.streams_per_connection:
            self.stats.limits["streams_per_connection"] += 1
            refusal = Failure.STREAM_LIMIT
            why = (
                f"too many streams on this relay connection (limit {limits.streams_per_connection})"
            )
        elif len(src.opening) >= limits.opens_per_connection:
            self.stats.limits["opens_per_connection"] += 1
            refusal = Failure.OPEN_LIMIT
            why = (
                f"too many opens in flight on this relay connection "
                f"(limit {limits.opens_per_connection})"
            )
        else:
            pool = request.pool
            agents = self.pools.get(pool, ())
            agent = self._pick(agents, None, src.token)
            if agent is None:
                serving = [a for a in agents if not a.draining]
                if not serving:
                    if pool == DEFAULT_POOL and all(a.draining for a in self.agents):
                        refusal, why = Failure.NO_AGENT, "no agent connected"
                    else:
                        refusal, why = Failure.NO_POOL_AGENT, f"no agent in pool {pool!r}"
                elif self.share_capped:
                    refusal, why = Failure.TOKEN_SHARE, self._share_refusal(serving, src.token)
                else:
                    refusal, why = Failure.AGENT_BUSY, "every agent is busy or not answering"
                    if all(a.carried >= limits.streams_per_agent for a in serving):
                        self.stats.limits["streams_per_agent"] += 1
                    elif all(len(a.opening) >= limits.opens_per_agent for a in serving):
                        self.stats.limits["opens_per_agent"] += 1
        if refusal is not None or agent is None:
            failure = refusal or Failure.NO_AGENT
            self._send(
                src,
                ConnectResponse(
                    request.session_id, failure.status, why, reason=failure.reason
                ).encode(sid),
            )
            self.stats.results[failure.result] += 1
            label = request.pool if request.pool in self.pools else UNKNOWN_POOL
            self.stats.pool_results[label, failure.result] += 1
            self.observer.open_refused(src, request, failure.result)
            return
        target = format_authority(request.host, request.port)
        targets = self.targets
        shared = targets.get(target)
        if shared is None:
            if len(targets) >= TARGETS_SHARED:
                targets.clear()
            shared = targets[target] = target
        stream = Stream(sid, request, src, agent, now, shared)
        src.streams[sid] = stream
        self.opening[stream] = Pending(bytes(raw), now)
        src.opening[stream] = None
        self._give(stream, agent, now)

    def _share_refusal(self, serving: list[Conn], token: object) -> str:
        """Count a `token_share` refusal; the reason the browser reads."""
        limits = self.limits
        capped = [a.shares[token] for a in serving if token in a.shares]
        if any(share.streams >= self.token_streams for share in capped):
            self.stats.limits["token_streams"] += 1
            held = f"{self.token_streams} of each agent's {limits.streams_per_agent} streams"
        else:
            self.stats.limits["token_opens"] += 1
            held = f"{self.token_opens} of each agent's {limits.opens_per_agent} opens in flight"
        return (
            f"this token holds its share of every agent that could take the open: "
            f"{held} (--max-token-share {limits.token_share:g})"
        )

    def _give(self, stream: Stream, agent: Conn, now: float) -> None:
        """Hand an open to `agent` (first or retried)."""
        pending = self.opening[stream]
        stream.agent = agent
        pending.sent_at = now
        agent.carried += 1
        agent.opening[stream] = None
        token = stream.client.token
        share = agent.shares.get(token)
        if share is None:
            share = agent.shares[token] = Share()
        share.streams += 1
        share.opens += 1
        self._send(agent, pending.frame)

    def _move(self, stream: Stream, now: float) -> bool:
        """Retry an unanswered open once on another agent; False if none can take it."""
        pending = self.opening.get(stream)
        if pending is None:
            return False  # answered or ended meanwhile (a write in the caller's loop cut it off)
        old = stream.agent
        new = self._pick(self.pools[old.pool], old, stream.client.token)
        if new is None:
            return False
        pending.retried = True
        self.stats.open_retries += 1
        old.carried -= 1
        del old.opening[stream]
        share = old.shares[stream.client.token]
        share.streams -= 1
        share.opens -= 1
        if not old.failed:
            old.probation = True
            self._send(
                old,
                TunnelError(stream.session_id, "open retried on another agent").encode(stream.sid),
            )
        self._give(stream, new, now)
        return True

    def _pick(self, agents: Sequence[Conn], exclude: Conn | None, token: object) -> Conn | None:
        """The agent for a new open of client `token`, among `agents` (one
        pool's): the least loaded of those that may take one, ties broken
        round-robin. Load is streams plus opens in flight, weighted; stalled,
        draining, full and (when busy) probation agents are skipped, and so
        are those where `token` holds its share while other tokens are
        connected (`share_capped` says so)."""
        limits = self.limits
        tied: list[Conn] = []
        least = 0
        self.share_capped = False
        shared = self.client_tokens > 1
        for agent in agents:
            if agent is exclude or agent.draining or agent.stalled or agent.failed:
                continue
            opening = len(agent.opening)
            if opening >= limits.opens_per_agent or (agent.probation and opening):
                continue
            streams = agent.carried
            if streams >= limits.streams_per_agent:
                continue
            share = agent.shares.get(token) if shared else None
            if share is not None and (
                share.opens >= self.token_opens or share.streams >= self.token_streams
            ):
                self.share_capped = True
                continue
            load = streams + opening * (OPEN_WEIGHT - 1)
            if not tied or load < least:
                tied, least = [agent], load
            elif load == least:
                tied.append(agent)
        if not tied:
            return None
        self.turn += 1
        return tied[self.turn % len(tied)]

    def _answer(
        self, src: Conn, stream: Stream, response: ConnectResponse, raw: memoryview, now: float
    ) -> None:
        if src.is_client:
            raise StreamError("client_a sent CONNECT_RESPONSE")
        self._apply(stream, _E_RESPONSE_OK if response.ok else _E_RESPONSE_FAIL)
        src.probation = False
        self.observer.open_answered(stream, now - stream.opened_at)
        if response.ok:
            _grant(stream, True, response.window)
        self._send(stream.client, raw)
        if response.ok:
            self.stats.results["ok"] += 1
            self.stats.pool_results[stream.agent.pool, "ok"] += 1
            self._answered(stream)
        else:
            self._end(stream, None, now, failure_of(response.status_code, response.reason).result)

    def _answered(self, stream: Stream) -> None:
        self.opening.pop(stream, None)
        agent = stream.agent
        if stream in agent.opening:
            del agent.opening[stream]
            agent.shares[stream.client.token].opens -= 1
        stream.client.opening.pop(stream, None)

    def _abort(self, stream: Stream, exc: StreamError, now: float) -> None:
        """TUNNEL_ERROR to both ends, for a stream that broke the rules."""
        self.stats.protocol_errors[exc.kind] += 1
        frame = TunnelError(stream.session_id, str(exc)).encode(stream.sid)
        self._send(stream.client, frame)
        self._send(stream.agent, frame)
        self._end(stream, _E_ABORT, now)

    def _apply(self, stream: Stream, event: Event) -> None:
        """The one place a stream's state changes, with the credit that follows."""
        state = stream.state = next_state(stream.state, event)
        if state not in ACCEPTS_DATA_UP:
            stream.up_room = -1
        elif stream.up_room < 0:
            stream.up_room, stream.up_held = stream.up_held, 0
        if state not in ACCEPTS_DATA_DOWN:
            stream.down_room = -1
        elif stream.down_room < 0:
            stream.down_room, stream.down_held = stream.down_held, 0

    def _end(self, stream: Stream, event: Event | None, now: float, result: str = "") -> None:
        """Forget a stream. `event` moves it to CLOSED (None: it is there);
        `result` is the outcome of an open that never opened."""
        if not stream.live:
            return  # ended already: a write on its way here cut one of its connections off
        opening = stream in self.opening
        if event is not None and stream.state is not _S_CLOSED:
            self._apply(stream, event)
        client, agent = stream.client, stream.agent
        agent.carried -= 1
        del client.streams[stream.sid]  # not live from here on
        if opening:
            self._answered(stream)
        share = agent.shares[client.token]
        share.streams -= 1
        if not result:
            if opening:
                result = "timeout" if event is _E_TIMEOUT else "error"
            else:
                result = "aborted" if event is _E_ABORT else "ok"
        if opening:  # an open that succeeded was counted "ok" when answered
            self.stats.results[result] += 1
            self.stats.pool_results[stream.agent.pool, result] += 1
        self.observer.stream_ended(stream, result, now - stream.opened_at)

    def _send(self, conn: Conn, frames: bytes | memoryview) -> None:
        if not conn.failed:
            conn.out.write(frames)

    # --- time ---

    def tick(self, now: float) -> None:
        """Timeouts, liveness probes and retries; call it a few times a second."""
        limits = self.limits
        for agent in list(self.agents):
            if agent.probe_at:
                if agent.last_rx >= agent.probe_at:
                    agent.probe_at = 0.0
                    agent.stalled = False
                elif not agent.stalled and now - agent.probe_at >= limits.stall_timeout:
                    agent.stalled = True
                    self.stats.agent_stalls += 1
                    for stream in list(agent.opening):
                        pending = self.opening.get(stream)
                        if pending is not None and not pending.retried:
                            self._move(stream, now)
            elif agent.opening and now - agent.last_rx >= limits.probe_after:
                agent.probe_at = now
                agent.link.ping()
        for stream, pending in list(self.opening.items()):
            age = now - stream.opened_at
            if age < limits.open_retry_after:
                break  # oldest first: the rest are younger
            if age >= limits.connect_timeout:
                self._expire(stream, now)
            elif not pending.retried and now - pending.sent_at >= limits.open_retry_after:
                self._move(stream, now)

    def _expire(self, stream: Stream, now: float) -> None:
        timeout = self.limits.connect_timeout
        self._send(
            stream.client,
            ConnectResponse(
                stream.session_id,
                Failure.OPEN_TIMEOUT.status,
                f"no answer from the agent within {timeout:g} s",
                reason=Failure.OPEN_TIMEOUT.reason,
            ).encode(stream.sid),
        )
        self._send(
            stream.agent, TunnelError(stream.session_id, "connect timeout").encode(stream.sid)
        )
        stream.agent.probation = True
        self._end(stream, _E_TIMEOUT, now)


def _grant(stream: Stream, up: bool, increment: int) -> None:
    """Credit for one direction: usable now, or held until the state lets it carry data."""
    room = stream.up_room if up else stream.down_room
    usable = room >= 0
    total = (room if usable else (stream.up_held if up else stream.down_held)) + increment
    if total > MAX_CREDIT:
        raise FlowControlError("WINDOW_UPDATE overflows the credit window")
    if up:
        if usable:
            stream.up_room = total
        else:
            stream.up_held = total
    elif usable:
        stream.down_room = total
    else:
        stream.down_held = total
