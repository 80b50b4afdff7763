"""Scale-out: three relays behind a real HAProxy, membership in a real Redis.

The agent meshes with every relay through the balancer's one URL, two
client_a processes spread their carriers over the relays, and the cluster
keeps serving through a crash (kill -9), a drain (SIGTERM during a download)
and a rolling restart of every relay. See tests/support/cluster.py for the
topology and deploy/haproxy/haproxy.cfg for the balancer config under test.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from conftest import LISTED, Target, curl_path
from helpers import (
    curl_via,
    echo_reply,
    file_sha256,
    half_close_exchange,
    open_connect_via,
    wait_exit,
)
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect, ws_create_server
from support.cluster import (
    CLUSTER_TTL,
    HAPROXY_CONFIG,
    RELAYS,
    Cluster,
    RelaySlot,
    require_tools,
    tool,
)
from support.logfmt import parse_logfmt
from support.procs import CLIENT_TOKEN, Proc, client_argv, http_get, metric, wait_until
from support.target import pattern_sha256

from fastrelay import eventloop
from fastrelay.protocol.frames import FrameType, encode_frame, iter_frames
from fastrelay.protocol.messages import ConnectResponse, GoAway, Hello, OpenStream

pytestmark = pytest.mark.timeout(150)

GREETING = f"hello from the target at {LISTED}".encode()
SERVE_AGAIN_WITHIN = 5.0  # the issue: after a relay dies, new tunnels work within 5 s
MESH_MARGIN = 3.0  # on top of --cluster-ttl: heartbeat period, SCAN, MEMBERS, one scrape


# --- fixtures and small helpers ---


@pytest.fixture
def make_cluster(
    tmp_path_factory: pytest.TempPathFactory,
    target: Target,
    rules_file: Path,
    request: pytest.FixtureRequest,
) -> Iterator:
    """Factory for a started cluster; every process it started is stopped at
    teardown (by PID), and a failing test gets every process's log tail."""
    require_tools()
    clusters: list[Cluster] = []

    def make(
        balance: str = "roundrobin", drain_timeout: float = 10.0, client_args: tuple = ()
    ) -> Cluster:
        cluster = Cluster(
            tmp_path_factory.mktemp("cluster-logs"),
            tmp_path_factory.mktemp("cluster-data"),
            balance=balance,
            drain_timeout=drain_timeout,
        )
        clusters.append(cluster)  # before start(): a half-started cluster is stopped too
        cluster.start(rules_file, client_args)
        return cluster

    try:
        yield make
    finally:
        report = getattr(request.node, "rep_call", None)
        for cluster in clusters:
            if report is None or report.failed:
                print(cluster.log_tails())
            cluster.stop()


def proxy_of(client) -> str:
    return f"http://{client.ready['listen']}"


def fetch(proxy: str, target: Target, max_time: float = 20) -> tuple[bool, str]:
    """One HTTPS request (one CONNECT tunnel) through client_a at `proxy`."""
    result = curl_via(proxy, target, target.https(LISTED, "/hello"), max_time=max_time)
    ok = result.returncode == 0 and GREETING in result.stdout
    detail = f"curl {result.returncode}: {result.stderr.decode(errors='replace').strip()}"
    return ok, detail


def fetch_many(proxy: str, target: Target, count: int, parallel: int = 5) -> list[str]:
    """`count` tunnels through one client_a, `parallel` at a time; the failures."""
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda _: fetch(proxy, target), range(count)))
    return [detail for ok, detail in results if not ok]


def ok_streams(slot: RelaySlot) -> float:
    return slot.metric("fastrelay_streams_total", result="ok")


@dataclass
class Attempt:
    started: float
    ok: bool
    detail: str
    proxy: str


@dataclass
class Load:
    """Threads doing sequential HTTPS requests through client_a, one tunnel
    each, until stopped; every attempt is recorded."""

    proxies: list[str]
    target: Target
    attempts: list[Attempt] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, proxy: str) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            ok, detail = fetch(proxy, self.target)
            with self.lock:
                self.attempts.append(Attempt(started, ok, detail, proxy))

    def __enter__(self) -> Load:
        for proxy in self.proxies:
            thread = threading.Thread(target=self._run, args=(proxy,), daemon=True)
            self.threads.append(thread)
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)  # curl's own --max-time bounds each request

    def done(self, after: float = 0.0, ok: bool | None = None) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts if a.started >= after and (ok is None or a.ok == ok)]

    def wait_for(self, count: int, after: float = 0.0, timeout: float = 30.0) -> None:
        wait_until(
            lambda: len(self.done(after)) >= count,
            timeout=timeout,
            interval=0.1,
            what=f"{count} requests of the load",
        )


def test_the_documented_haproxy_config_is_valid_as_shipped() -> None:
    """deploy/haproxy/haproxy.cfg checks clean with its built-in defaults too
    (the tests below run it with their addresses in the environment)."""
    require_tools()
    result = subprocess.run(
        [tool("haproxy") or "haproxy", "-c", "-f", str(HAPROXY_CONFIG)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- a. the mesh, and every relay carries streams ---


@pytest.mark.parametrize("balance", ["roundrobin", "random"])
def test_agent_meshes_with_every_relay_and_all_relays_carry_streams(
    make_cluster, target: Target, balance: str
) -> None:
    # Three carriers per client_a: HAProxy's round-robin sends three
    # consecutive dials to three different relays, so each client_a alone
    # reaches every relay. (`random` makes no such promise; there we check the
    # mesh, which must make every relay able to serve whatever lands on it.)
    cluster = make_cluster(balance=balance, client_args=("--carriers", "3"))
    assert cluster.agent is not None

    # The mesh: one connection per relay, duplicates closed, not kept.
    assert cluster.agent_metric("fastrelay_relay_connected") == RELAYS
    assert cluster.agent_metric("fastrelay_cluster_members") == RELAYS
    cluster.wait_one_agent_connection_each()
    for slot in cluster.relays:
        assert slot.metric("fastrelay_cluster_members") == RELAYS, slot.instance_id
    dials = cluster.agent_metric("fastrelay_relay_dials_total", role="agent", result="ok")
    assert dials == RELAYS, f"{dials} successful agent dials for {RELAYS} relays"

    # Many tunnels through each client_a, all served.
    for client in cluster.clients:
        failures = fetch_many(proxy_of(client), target, 30)
        assert failures == [], f"{client.name}: {len(failures)} of 30 failed: {failures[:3]}"
    ok_total = sum(ok_streams(slot) for slot in cluster.relays)
    assert ok_total == 60, f"the relays counted {ok_total} tunnels for 60 requests"
    # The agent is on every relay, so no relay ever had to refuse for lack of one.
    for client in cluster.clients:
        assert metric(client.ready["admin"], "fastrelay_client_retries_total") == 0
    for slot in cluster.relays:
        assert slot.metric("fastrelay_streams_total", result="no_agent") == 0

    if balance != "roundrobin":
        return
    # Every relay carries streams. Each client_a's carriers cover all relays
    # (round-robin), and tunnels held open at once go to different carriers
    # (new streams go to the least busy one): 3 held tunnels per client_a use
    # all 3 of its carriers, so every relay opens at least one of them.
    for slot in cluster.relays:
        assert slot.metric("fastrelay_connections", role="client") >= 1, (
            f"premise: HAProxy round-robin gave {slot.instance_id} no client_a carrier"
        )
    wait_until(
        lambda: all(
            metric(c.ready["admin"], "fastrelay_streams_active") == 0 for c in cluster.clients
        ),
        what="the 60 tunnels closed at client_a",
    )
    before = {slot.n: ok_streams(slot) for slot in cluster.relays}
    echo = target.port(LISTED, "echo")
    for client in cluster.clients:
        held = []
        try:
            for _ in range(3):
                held.append(open_connect_via(client, LISTED, echo))
            for n, sock in enumerate(held):
                payload = f"{client.name} tunnel {n}".encode() * 100
                assert half_close_exchange(sock, payload) == echo_reply(payload)
        finally:
            for sock in held:
                sock.close()
    grown = {slot.n: ok_streams(slot) - before[slot.n] for slot in cluster.relays}
    assert sum(grown.values()) == 6, grown
    assert all(n > 0 for n in grown.values()), f"streams per relay: {grown}"
    assert all(ok_streams(slot) > 0 for slot in cluster.relays)


# --- b. kill -9 of a relay ---


def test_a_killed_relay_is_routed_around_and_leaves_the_mesh(make_cluster, target: Target) -> None:
    cluster = make_cluster()
    victim, survivors = cluster.relays[0], cluster.relays[1:]
    assert victim.proc is not None and cluster.haproxy is not None
    store = redis.Redis(host="127.0.0.1", port=cluster.redis_port)
    try:
        with Load([proxy_of(c) for c in cluster.clients], target) as load:
            load.wait_for(6)
            assert load.done(ok=False) == [], load.done(ok=False)[:3]
            killed_at = time.monotonic()
            victim.proc.kill()  # SIGKILL: no GOAWAY, no key deleted

            # The agent drops the dead instance once its Redis key expires.
            wait_until(
                lambda: (
                    cluster.agent_metric("fastrelay_cluster_members") == RELAYS - 1
                    and cluster.agent_metric("fastrelay_relay_connected") == RELAYS - 1
                ),
                timeout=CLUSTER_TTL + MESH_MARGIN,
                interval=0.1,
                what="the agent's mesh shrinks to the live relays",
            )
            for slot in survivors:
                assert slot.metric("fastrelay_cluster_members") == RELAYS - 1
            cluster.wait_one_agent_connection_each(survivors)
            keys = sorted(k.decode() for k in store.scan_iter(match=f"{cluster.name}:relay:*"))
            assert keys == [f"{cluster.name}:relay:{s.instance_id}" for s in survivors]
            assert not cluster.haproxy.server_up(victim.server)

            # Tunnels attempted more than 5 s after the kill must all work.
            load.wait_for(12, after=killed_at + SERVE_AGAIN_WITHIN)
            # Both client_a processes keep their two carriers (on the live relays).
            for client in cluster.clients:
                wait_until(
                    lambda c=client: metric(c.ready["admin"], "fastrelay_relay_connected") == 2,
                    what=f"{client.name} has 2 carriers again",
                )
    finally:
        store.close()
    late = load.done(after=killed_at + SERVE_AGAIN_WITHIN)
    late_failures = [a.detail for a in late if not a.ok]
    early_failures = len(load.done(ok=False))
    print(
        f"kill -9: {len(load.attempts)} tunnels, {early_failures} failed in the first "
        f"{SERVE_AGAIN_WITHIN:g} s, {len(late)} attempted later"
    )
    assert late_failures == [], f"{len(late_failures)} of {len(late)} failed: {late_failures[:3]}"
    assert victim.proc.popen.returncode == -signal.SIGKILL


# --- c. SIGTERM during a long download ---

DOWNLOAD = 64 * 10**6
DOWNLOAD_RATE = "8M"  # curl --limit-rate: about 8 s, so the drain is long enough to watch


def test_a_draining_relay_finishes_its_download_and_new_tunnels_go_elsewhere(
    make_cluster, target: Target, tmp_path: Path
) -> None:
    cluster = make_cluster(drain_timeout=30)
    assert cluster.haproxy is not None
    out = tmp_path / "download.bin"
    download = subprocess.Popen(
        [
            curl_path(),
            "-sS",
            "--max-time",
            "60",
            "--limit-rate",
            DOWNLOAD_RATE,
            "--cacert",
            str(target.ca_pem),
            "-x",
            proxy_of(cluster.clients[0]),
            "-o",
            str(out),
            "-w",
            "%{http_code} %{size_download}",
            target.https(LISTED, f"/bytes/{DOWNLOAD}?seed=5"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: out.exists() and out.stat().st_size >= 2 * 10**6,
            timeout=15,
            what="the download is under way",
        )
        active = {slot.n: slot.metric("fastrelay_streams_active") for slot in cluster.relays}
        carrying = [slot for slot in cluster.relays if active[slot.n] == 1]
        assert len(carrying) == 1 and sum(active.values()) == 1, active
        victim = carrying[0]
        others = [slot for slot in cluster.relays if slot is not victim]
        assert victim.proc is not None
        victim_ok = ok_streams(victim)
        others_ok = sum(ok_streams(slot) for slot in others)

        victim.proc.signal(signal.SIGTERM)
        wait_until(
            lambda: http_get(f"http://{victim.admin}/readyz")[1].strip() == "draining",
            timeout=5,
            what=f"{victim.instance_id} /readyz says draining",
        )
        assert http_get(f"http://{victim.admin}/readyz")[0] == 503
        wait_until(
            lambda: not cluster.haproxy.server_up(victim.server),  # type: ignore[union-attr]
            timeout=5,
            what=f"HAProxy takes {victim.server} out",
        )

        # New tunnels during the drain: all served, none by the draining relay.
        failures = []
        for client in cluster.clients:
            failures += fetch_many(proxy_of(client), target, 10, parallel=2)
        assert failures == [], failures[:3]
        assert victim.proc.alive() and download.poll() is None, (
            "premise: the download (and so the drain) outlasts the new tunnels"
        )
        assert ok_streams(victim) == victim_ok, "a draining relay opened a new tunnel"
        assert sum(ok_streams(slot) for slot in others) == others_ok + 20

        stdout, stderr = download.communicate(timeout=60)
    finally:
        if download.poll() is None:
            download.kill()
            download.communicate(timeout=5)
    assert download.returncode == 0, stderr.decode(errors="replace")
    assert stdout.decode() == f"200 {DOWNLOAD}"
    assert file_sha256(out) == pattern_sha256(DOWNLOAD, seed=5)

    status, _ = wait_exit(victim.proc, 10)
    assert status == 0, f"{victim.instance_id} exit status {status}:\n{victim.proc.log_tail()}"
    # It left the set: the agent wants and holds the other two only.
    cluster.wait_mesh(RELAYS - 1, timeout=CLUSTER_TTL + MESH_MARGIN)


# --- d. rolling restart under load ---


def failed_opens(clients: list) -> list[str]:
    """client_a's access-log lines (logged to its log by --access-log -) of every
    tunnel that did not end "ok", with the first try of a retried one: the
    reason a browser got its error, which curl does not show for a CONNECT."""
    lines = [
        line
        for proc in clients
        for line in proc.log_path.read_text(errors="replace").splitlines()
        if " program=client " in line and " session=" in line
    ]
    failed = {
        line.split(" session=", 1)[1].split(" ", 1)[0]
        for line in lines
        if " result=ok " not in line and " result=retried " not in line
    }
    return [line for line in lines if line.split(" session=", 1)[1].split(" ", 1)[0] in failed]


def test_rolling_restart_of_every_relay_under_load_loses_no_tunnel(
    make_cluster, target: Target
) -> None:
    cluster = make_cluster(client_args=("--access-log", "-"))  # why a tunnel failed, if one does
    proxies = [proxy_of(c) for c in cluster.clients] * 2  # 4 threads, 2 per client_a
    with Load(proxies, target) as load:
        load.wait_for(8)
        for slot in cluster.relays:
            old = slot.proc
            assert old is not None
            old.signal(signal.SIGTERM)
            status, _ = wait_exit(old, cluster.drain_timeout + 5)
            assert status == 0, f"{slot.instance_id} exit status {status}:\n{old.log_tail()}"
            cluster.start_relay(slot)  # same ports, same instance id
            cluster.wait_relay_in_service(slot)
        restarted_at = time.monotonic()
        load.wait_for(8, after=restarted_at)
    failures = load.done(ok=False)
    print(f"rolling restart: {len(load.attempts)} tunnels, {len(failures)} failed")
    assert failures == [], ([a.detail for a in failures[:5]], failed_opens(cluster.clients))
    assert len(load.attempts) >= 16


# --- bug reproduction: a duplicate mesh connection takes tunnels, then drops them ---


def tunnel_once(client, host: str, port: int) -> str | None:
    """One CONNECT tunnel with an echo exchange; None if it worked, else why not."""
    payload = b"x" * 1000
    try:
        sock = open_connect_via(client, host, port)
    except (AssertionError, OSError) as exc:
        return str(exc)[:200]
    try:
        reply = half_close_exchange(sock, payload)
    except OSError as exc:
        return f"exchange: {exc}"
    finally:
        sock.close()
    return None if reply == echo_reply(payload) else f"bad echo reply {reply[:80]!r}"


def test_duplicate_mesh_dials_never_take_a_tunnel(
    make_chain, target: Target, rules_file: Path
) -> None:
    """The agent's mesh closes a connection that landed on a relay it already
    holds. The relay must never route a tunnel to that duplicate meanwhile.

    A relay with `--peers relay-ghost` announces an instance that never comes
    up, so the agent keeps dialling and landing on relay-1 again (a duplicate
    every second or so), as it does for a whole TTL after a relay dies or
    while it looks for a new one. Tunnels opened meanwhile must all work.
    """
    chain = make_chain()
    chain.start_relay("--instance-id", "relay-1", "--peers", "relay-ghost")
    agent = chain.start_agent("--allow", "127.0.0.0/8")
    client = chain.start_client(rules_file)
    echo = target.port(LISTED, "echo")
    failures: list[str] = []
    done = 0
    deadline = time.monotonic() + 8
    lock = threading.Lock()

    def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            why = tunnel_once(client, LISTED, echo)
            with lock:
                done += 1
                if why is not None:
                    failures.append(why)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    duplicates = metric(
        agent.ready["admin"], "fastrelay_relay_dials_total", role="agent", result="duplicate"
    )
    print(f"{done} tunnels, {len(failures)} failed, {duplicates:g} duplicate dials")
    assert duplicates > 0, "premise: the agent kept dialling duplicates"
    assert failures == [], f"{len(failures)} of {done} tunnels failed: {failures[:3]}"


# --- bug reproduction: an idle draining relay drops opens that crossed its GOAWAY ---


class RawClient(WSListener):
    """A raw client_a connection: every mux frame the relay sends, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: asyncio.Queue[tuple[int, int, bytes]] = asyncio.Queue()
        self.closed = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.BINARY:
            data = frame.get_payload_as_bytes()
            for ftype, _flags, sid, off, length in iter_frames(memoryview(data)):
                self.frames.put_nowait((ftype, sid, data[off : off + length]))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    async def next(self, timeout: float) -> tuple[int, int, bytes] | None:
        """The next frame, or None if the connection closed first."""
        getter = asyncio.ensure_future(self.frames.get())
        await asyncio.wait([getter, self.closed], timeout=timeout, return_when="FIRST_COMPLETED")
        if getter.done():
            return getter.result()
        getter.cancel()
        assert self.closed.done(), f"no frame within {timeout} s"
        return None


def test_an_open_that_crosses_goaway_is_refused_with_503_not_dropped(make_chain) -> None:
    """client_a may send an open just before the relay's GOAWAY reaches it.
    The relay must answer it (503 "draining", which client_a retries on
    another relay) rather than close the connection under it: a relay that
    closes at once because it had no open tunnel turns that open into a
    502 "relay connection lost" at the browser."""
    chain = make_chain()
    relay = chain.start_relay("--drain-timeout", "5")

    async def run() -> tuple[int, int, bytes] | None:
        transport, client = await ws_connect(
            RawClient,
            f"{chain.relay_url}/v1/client",
            extra_headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
        )
        try:
            hello = await client.next(5)
            assert hello is not None and hello[0] == FrameType.HELLO
            base = Hello.decode(hello[2]).stream_id_base
            relay.signal(signal.SIGTERM)
            goaway = await client.next(5)
            assert goaway is not None and goaway[0] == FrameType.GOAWAY, goaway
            # The open left client_a one-way-trip earlier, before GOAWAY arrived.
            await asyncio.sleep(0.05)
            open_ = OpenStream(FrameType.CONNECT, "crossed-goaway", LISTED, 443)
            transport.send(WSMsgType.BINARY, open_.encode(base + 1))
            return await client.next(5)
        finally:
            transport.disconnect()

    answer = eventloop.run(run())
    assert answer is not None, "the relay closed the connection without answering the open"
    ftype, _sid, body = answer
    assert ftype == FrameType.CONNECT_RESPONSE, answer
    response = ConnectResponse.decode(body)
    assert (response.status_code, response.reason) == (503, "draining")


# --- bug reproduction: a retry after "draining" landed on the same draining relay ---


class DrainingRelay:
    """A stand-in relay, in a thread of its own, for the moment a relay starts to
    drain. Its first two connections are carriers to a relay ("relay-old") that
    answers an open with GOAWAY and 503 "draining" on that connection only: the
    sibling's GOAWAY is still on its way, as it can be when the real relay
    sends it to every connection at once. Later connections are a relay
    ("relay-new") that accepts every open. `opens` is (connection, instance)
    for each open, in order."""

    def __init__(self) -> None:
        self.opens: list[tuple[int, str]] = []
        self.connections = 0
        self.transports: list[WSTransport] = []
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10), "the stand-in relay did not start"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            ws_create_server(lambda _request: self._Conn(self), "127.0.0.1", 0)
        )
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        started.set()
        self.loop.run_forever()
        self.server.close()
        for transport in self.transports:
            transport.disconnect()
        self.loop.run_until_complete(asyncio.sleep(0.1))  # the disconnects go out
        self.loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    class _Conn(WSListener):
        def __init__(self, relay: DrainingRelay) -> None:
            super().__init__()
            self.relay = relay
            self.index = relay.connections
            relay.connections += 1
            self.instance = "relay-old" if self.index < 2 else "relay-new"

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.relay.transports.append(transport)
            base = (self.index + 1) << 12
            hello = Hello(self.instance, stream_id_base=base, stream_id_count=1 << 12)
            transport.send(WSMsgType.BINARY, hello.encode())

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type != WSMsgType.BINARY:
                return
            data = frame.get_payload_as_bytes()
            for ftype, _flags, sid, off, length in iter_frames(memoryview(data)):
                if ftype == FrameType.FIN:  # the browser is done: so is the "target"
                    transport.send(WSMsgType.BINARY, encode_frame(FrameType.FIN, sid))
                if ftype not in (FrameType.CONNECT, FrameType.REQUEST):
                    continue
                request = OpenStream.decode(ftype, data[off : off + length])
                self.relay.opens.append((self.index, self.instance))
                if self.instance == "relay-old":
                    refusal = ConnectResponse(
                        request.session_id, 503, "relay is shutting down", reason="draining"
                    )
                    reply = GoAway("relay is shutting down").encode() + refusal.encode(sid)
                else:
                    reply = ConnectResponse(request.session_id, 200).encode(sid)
                transport.send(WSMsgType.BINARY, reply)


CLIENT_ARGS = ("--carriers", "2", "--open-timeout", "10", "--access-log", "-")


def access_lines(client: Proc) -> list[dict[str, str]]:
    """client_a's access-log lines (--access-log - writes them to its log)."""
    text = client.log_path.read_text(errors="replace")
    return [parse_logfmt(line) for line in text.splitlines() if line.startswith("ts=")]


def test_a_retry_after_draining_avoids_every_carrier_to_that_relay(
    make_chain, rules_file: Path
) -> None:
    """client_a keeps two carriers, and both may land on the relay that starts to
    drain. An open refused as "draining" on one of them must not be retried on
    the other, whose GOAWAY has not arrived yet (it would be refused the same
    way, and the browser would get a 503 in a rolling restart). client_a retires
    every carrier to a draining relay and retries on a fresh one."""
    relay = DrainingRelay()
    chain = make_chain()
    try:
        client = Proc(
            "client",
            client_argv(relay.url, rules_file, *CLIENT_ARGS),
            {"FASTRELAY_TOKEN": CLIENT_TOKEN},
            chain.log_dir,
        )
        chain.procs.append(client)
        wait_until(
            lambda: metric(client.ready["admin"], "fastrelay_relay_connected") == 2,
            what="client_a's two carriers on the old relay",
        )
        sock = open_connect_via(client, LISTED, 443)  # AssertionError unless 200
        sock.close()
        first, retry = relay.opens
        assert first[1] == "relay-old"
        assert retry[1] == "relay-new", f"the retry went to {retry} after {first}"
        # The access log says where the tunnel went, and why its first try did not.
        wait_until(lambda: access_lines(client), what="client_a's access-log line")
        [line] = access_lines(client)
        assert (line["result"], line["relay"]) == ("ok", "relay-new"), line
        assert line["retry_of"] == "relay-old:draining", line
    finally:
        relay.stop()
