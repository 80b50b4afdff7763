"""Isolation on a shared relay: one misbehaving peer costs its own streams and
nothing else (docs/OPERATIONS.md "Limits and isolation"; docs/PROTOCOL.md §4,
§7, §10). Every test runs its own relay, agent(s) and client_a, with curl as
the well-behaved browser and the test target behind the agent:

    curl --CONNECT--> client_a B -> relay -> agent(s) -> target
    misbehaving peer -----------/     (raw WebSockets, bench/noisy_peer.py,
                                       a frozen or rogue agent)

1. one oversized WebSocket message closes only its sender (1009);
2. a stalled or slow client_a-like reader does not freeze the others;
3. one token at its connection limit does not lock other tokens out;
4. a frozen or rogue agent does not attract opens;
5. the per-connection stream cap and the per-agent open cap answer 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LISTED, Chain, Proc, Target, curl_path
from helpers import (
    all_streams_idle,
    file_sha256,
    open_connect_via,
    raw_exchange,
    relay_bytes,
    split_address,
    streams_active,
)
from picows import WSMsgType, ws_connect
from support.procs import AGENT_TOKEN, CLIENT_CARRIERS, CLIENT_TOKEN, ROOT, metric, wait_until
from support.target import pattern_sha256
from test_scaleout import fetch, fetch_many
from test_stream_rules import RawClient, open_frame, session

from fastrelay import eventloop
from fastrelay.protocol.frames import FrameType, encode_frame
from fastrelay.protocol.messages import ConnectResponse

pytestmark = pytest.mark.timeout(180)

MB = 1_000_000
MiB = 1 << 20
AGENT_ARGS = ("--allow", "127.0.0.0/8")


# --- small helpers ---


def relay_metric(chain: Chain, name: str, **labels: str) -> float:
    assert chain.relay is not None
    return metric(chain.relay.ready["admin"], name, **labels)


def limit_hits(chain: Chain, limit: str) -> float:
    return relay_metric(chain, "fastrelay_limit_hits_total", limit=limit)


def start_download(
    proxy: str, target: Target, out: Path, size: int, seed: int, rate: str | None = None
) -> subprocess.Popen:
    """curl downloading /bytes/SIZE?seed=SEED through client_a at `proxy` into `out`."""
    argv = [curl_path(), "-sS", "--max-time", "90", "--cacert", str(target.ca_pem), "-x", proxy]
    if rate is not None:
        argv += ["--limit-rate", rate]
    argv += ["-o", str(out), target.https(LISTED, f"/bytes/{size}?seed={seed}")]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def check_download(curl: subprocess.Popen, out: Path, size: int, seed: int) -> None:
    _, err = curl.communicate(timeout=120)
    assert curl.returncode == 0, f"download {seed}: curl {curl.returncode}: {err.decode()}"
    assert out.stat().st_size == size, f"download {seed}: {out.stat().st_size} of {size} bytes"
    assert file_sha256(out) == pattern_sha256(size, seed), f"download {seed}: wrong bytes"


def stop_curls(curls: list[subprocess.Popen]) -> None:
    for curl in curls:
        if curl.poll() is None:
            curl.kill()
            curl.communicate(timeout=5)


def downloads(proxy: str, target: Target, tmp_path: Path, seeds: range, size: int) -> None:
    """Parallel downloads through client_a at `proxy`; each must arrive intact."""
    curls = {
        seed: start_download(proxy, target, tmp_path / f"dl-{seed}", size, seed) for seed in seeds
    }
    try:
        for seed, curl in curls.items():
            check_download(curl, tmp_path / f"dl-{seed}", size, seed)
    finally:
        stop_curls(list(curls.values()))


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat: R, S, T (stopped), ..."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0]


def upgrade_request(path: str, token: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()


def open_websocket(address: str, path: str, token: str) -> socket.socket:
    """A WebSocket upgraded on a raw socket and left open (it never reads again)."""
    sock = socket.create_connection(split_address(address), timeout=10)
    try:
        sock.sendall(upgrade_request(path, token))
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = sock.recv(4096)
            assert chunk, f"the relay closed the upgrade: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101 "), head[:300]
    except BaseException:
        sock.close()
        raise
    return sock


class Listener:
    """A TCP port on LISTED for the agent to dial, closed at the end.

    - `Listener(backlog=64)`: a silent target. Connections complete in the
      kernel; `accepted()` takes them (never blocking) and counts them, and
      nothing is ever sent on them.
    - `Listener.blackhole()`: listen(0) with its one queue slot taken by our
      own connection, so every further SYN is dropped and a dial hangs.
    """

    def __init__(self, backlog: int) -> None:
        self.sock = socket.socket()
        self.held: list[socket.socket] = []
        self.sock.bind((LISTED, 0))
        self.sock.listen(backlog)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    @classmethod
    def blackhole(cls) -> Listener:
        hole = cls(0)
        filler = socket.create_connection((LISTED, hole.port), timeout=5)
        hole.held.append(filler)
        return hole

    def accepted(self) -> int:
        for _ in range(1000):
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                break
            self.held.append(conn)
        return len(self.held)

    def hang_up(self) -> None:
        """Close every connection taken so far (the listener stays)."""
        self.accepted()
        for sock in self.held:
            sock.close()
        self.held.clear()

    def close(self) -> None:
        for sock in [self.sock, *self.held]:
            sock.close()


@contextlib.contextmanager
def listening(backlog: int = 64) -> Iterator[Listener]:
    listener = Listener(backlog)
    try:
        yield listener
    finally:
        listener.close()


def send_connect(client: Proc, host: str, port: int) -> socket.socket:
    """A CONNECT sent to client_a whose answer is not awaited (the open stays in flight)."""
    sock = socket.create_connection(split_address(client.ready["listen"]), timeout=10)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    return sock


def hang_dials(
    client: Proc, agent: Proc, hole: Listener, count: int, held: list[socket.socket], what: str
) -> None:
    """`count` CONNECTs through `client` to `hole` (a blackhole), kept in `held`, and
    a wait until the agent holds every dial in `held` (dials that never answer)."""
    for _ in range(count):
        held.append(send_connect(client, LISTED, hole.port))
    wait_until(lambda: streams_active(agent) == len(held), timeout=15, what=what)


def refusal(client: Proc, host: str, port: int) -> str:
    """client_a's answer to a CONNECT it must refuse: status line and reason."""
    with pytest.raises(AssertionError) as refused:
        open_connect_via(client, host, port).close()
    return str(refused.value)


# --- 1. one oversized message ---

OVERSIZED = 2 * MiB  # the relay's --max-frame-size is its default, 1 MiB
AFTER = 200_000  # valid data sent right after it, which must not be routed either
B_SIZE = 30 * MB


async def send_oversized(chain: Chain, echo_port: int) -> int | None:
    """A raw client_a opens a tunnel, then sends one message over the relay's
    size limit and a valid one after it; the close code it gets."""
    transport, client, hello = await session(chain)
    try:
        sid = hello.stream_id_base + 1
        transport.send(WSMsgType.BINARY, open_frame(sid, LISTED, echo_port))
        ftype, got_sid, body = await client.next(10)
        assert (ftype, got_sid) == (FrameType.CONNECT_RESPONSE, sid)
        response = ConnectResponse.decode(body)
        assert response.status_code == 200, response
        assert response.window >= OVERSIZED, "premise: the data is within the stream's credit"
        transport.send(WSMsgType.BINARY, encode_frame(FrameType.TUNNEL_DATA, sid, b"x" * OVERSIZED))
        transport.send(WSMsgType.BINARY, encode_frame(FrameType.TUNNEL_DATA, sid, b"y" * AFTER))
        return await asyncio.wait_for(client.close_code, 15)
    finally:
        transport.disconnect()


def test_an_oversized_message_closes_its_sender_and_not_the_agent(
    make_chain, target: Target, rules_file: Path, tmp_path: Path
) -> None:
    chain = make_chain()
    chain.start_relay()
    agent = chain.start_agent(*AGENT_ARGS)
    chain.start_client(rules_file)
    agent_admin = agent.ready["admin"]
    redials = metric(agent_admin, "fastrelay_reconnects_total")
    dials = metric(agent_admin, "fastrelay_relay_dials_total", result="ok")
    out = tmp_path / "b.bin"
    # B's download, slowed so that it is under way through the same agent throughout.
    download = start_download(chain.proxy, target, out, B_SIZE, seed=11, rate="5M")
    try:
        wait_until(
            lambda: out.exists() and out.stat().st_size >= MB,
            timeout=30,
            what="B's download under way",
        )
        upstream = relay_bytes(chain, "upstream")
        code = eventloop.run(send_oversized(chain, target.port(LISTED, "echo")))
        assert code == 1009, f"the oversized sender got close code {code}"
        routed = relay_bytes(chain, "upstream") - upstream
        assert routed < AFTER, f"{routed:g} bytes routed from a sender cut off for its size"
        assert download.poll() is None, "premise: B's download outlasts the oversized message"
        check_download(download, out, B_SIZE, seed=11)
    finally:
        stop_curls([download])

    # The agent kept its one relay connection, and B still opens tunnels through it.
    assert metric(agent_admin, "fastrelay_reconnects_total") == redials
    assert metric(agent_admin, "fastrelay_relay_dials_total", result="ok") == dials
    assert relay_metric(chain, "fastrelay_connections", role="agent") == 1
    assert fetch_many(chain.proxy, target, 6, parallel=3) == []
    wait_until(lambda: all_streams_idle(chain), timeout=15, what="every stream closed")


# --- 2. a stalled or slow client_a-like reader ---

NOISY_STREAMS = 8
NOISY_RATE = 500_000  # bytes/s per stream when slow (4 MB/s in all)
B_DOWNLOADS = range(1, 4)
B_DOWNLOAD_SIZE = 16 * MB


def socket_inodes(pid: int) -> set[str]:
    """The inode numbers of the sockets process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    return inodes


def unsent_towards(peer: Proc, relay: Proc) -> int:
    """Bytes the relay's kernel holds for `peer`'s WebSocket that the peer has
    not taken (the Send-Q of the relay's end): the peer is not keeping up."""
    relay_port = split_address(relay.ready["listen"])[1]
    peer_inodes = socket_inodes(peer.pid)
    # /proc/net/tcp rows: sl local_address rem_address st tx_queue:rx_queue ... inode
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]

    def port(address: str) -> int:
        return int(address.rpartition(":")[2], 16)

    peer_ports = {port(r[1]) for r in rows if r[9] in peer_inodes and port(r[2]) == relay_port}
    return sum(
        int(r[4].partition(":")[0], 16)
        for r in rows
        if port(r[1]) == relay_port and port(r[2]) in peer_ports
    )


def relay_sockets_to(peer: Proc, relay: Proc) -> int:
    """How many sockets the relay process holds that are connected to `peer`."""
    relay_port = split_address(relay.ready["listen"])[1]
    peer_inodes, relay_inodes = socket_inodes(peer.pid), socket_inodes(relay.pid)
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]

    def port(address: str) -> int:
        return int(address.rpartition(":")[2], 16)

    peer_ports = {port(r[1]) for r in rows if r[9] in peer_inodes and port(r[2]) == relay_port}
    return sum(1 for r in rows if r[9] in relay_inodes and port(r[2]) in peer_ports)


def start_noisy_peer(chain: Chain, rate: int, window: int = 0, rcvbuf: int = 4096) -> Proc:
    """bench/noisy_peer.py (small SO_RCVBUF, endless downloads at client_a's window,
    honest credit unless `window` says how much each stream grants) against a bench
    target of its own; both stop with the chain."""
    env = {"PYTHONPATH": str(ROOT)}
    bench_target = Proc(
        "bench-target", [sys.executable, "-m", "bench.target", "--bind", LISTED], env, chain.log_dir
    )
    chain.procs.append(bench_target)
    argv = [sys.executable, "-m", "bench.noisy_peer", "--relay", chain.relay_url]
    argv += ["--target", f"{LISTED}:{bench_target.ready['ports'][LISTED]}"]
    argv += ["--streams", str(NOISY_STREAMS), "--rcvbuf", str(rcvbuf), "--max-seconds", "150"]
    argv += ["--rate", str(rate)]
    if window:
        argv += ["--window", str(window)]
    noisy = Proc("noisy-peer", argv, {**env, "FASTRELAY_BENCH_TOKEN": CLIENT_TOKEN}, chain.log_dir)
    chain.procs.append(noisy)
    return noisy


@pytest.mark.parametrize("mode", ["stalled", "slow"])
def test_a_stalled_or_slow_reader_does_not_freeze_other_clients(
    make_chain, target: Target, rules_file: Path, tmp_path: Path, mode: str
) -> None:
    chain = make_chain()
    relay = chain.start_relay()
    chain.start_agent(*AGENT_ARGS)
    chain.start_client(rules_file)
    cut_off = limit_hits(chain, "connection_buffer")
    noisy = start_noisy_peer(chain, NOISY_RATE if mode == "slow" else 0)
    try:
        if mode == "stalled":
            noisy.signal(signal.SIGSTOP)  # it neither reads nor answers pings
        # Premise: the peer lags, with its data backed up at the relay's socket.
        wait_until(
            lambda: unsent_towards(noisy, relay) > 0,
            timeout=30,
            what=f"data backed up towards the {mode} peer",
        )
        downloads(chain.proxy, target, tmp_path, B_DOWNLOADS, B_DOWNLOAD_SIZE)
        failures = fetch_many(chain.proxy, target, 12, parallel=4)
        assert failures == [], f"{len(failures)} of 12 opens failed: {failures[:3]}"
        if mode == "stalled":
            assert process_state(noisy.pid) == "T", "premise: the peer stayed stopped"
        # The noisy peer only granted credit it may be sent: it is slowed, not cut off.
        assert noisy.alive()
        assert limit_hits(chain, "connection_buffer") == cut_off
        clients = relay_metric(chain, "fastrelay_connections", role="client")
        assert clients == CLIENT_CARRIERS + 1, "the noisy peer lost its connection"
    finally:
        noisy.signal(signal.SIGCONT)  # then SIGTERM (and SIGKILL if need be)
        noisy.stop()


def test_a_peer_that_grants_more_than_it_reads_is_cut_off_and_its_queue_freed(
    make_chain, target: Target, rules_file: Path, tmp_path: Path
) -> None:
    """Over --max-connection-buffer the relay closes the connection (1008) at once,
    dropping its queue rather than waiting for the stopped peer to read it."""
    chain = make_chain()
    relay = chain.start_relay("--max-connection-buffer", "16MiB")
    chain.start_agent(*AGENT_ARGS)
    chain.start_client(rules_file)
    # 64 MiB granted, 4 times the budget; a default receive buffer, so that it keeps
    # up until it stops. (With a 4 MiB budget a peer that fell 4 MiB behind while every
    # stream started, on a loaded machine, was cut off before it was ready.)
    noisy = start_noisy_peer(chain, 0, window=8 * MiB, rcvbuf=0)
    try:
        noisy.signal(signal.SIGSTOP)
        wait_until(
            lambda: limit_hits(chain, "connection_buffer") == 1,
            timeout=30,
            what="the relay cuts off the peer that does not read",
        )
        # The relay no longer holds its socket, nor a queue for it (what the kernel
        # may still try to deliver is not the relay's), though the peer is still
        # stopped and has read none of it.
        wait_until(lambda: not relay_sockets_to(noisy, relay), what="the relay drops the socket")
        assert relay_metric(chain, "fastrelay_connections", role="client") == CLIENT_CARRIERS
        assert relay_metric(chain, "fastrelay_ws_write_buffer_bytes", role="client") < MiB
        assert process_state(noisy.pid) == "T"
        # Everyone else carries on.
        downloads(chain.proxy, target, tmp_path, range(1, 2), B_DOWNLOAD_SIZE)
        assert relay_metric(chain, "fastrelay_connections", role="agent") == 1
    finally:
        noisy.signal(signal.SIGCONT)
        noisy.stop()


def test_an_agent_whose_frame_limit_is_below_the_relays_is_refused_clearly(
    make_chain, rules_file: Path
) -> None:
    """A relay that forwards larger messages than the agent accepts would let one
    client cut the agent off: the agent refuses that relay at HELLO, saying why."""
    chain = make_chain()
    relay = chain.start_relay("--max-frame-size", "4MiB")
    agent = chain.start_agent(*AGENT_ARGS, wait=False)
    wait_until(
        lambda: "set it to at least 4194304" in agent.log_tail(),
        what="the agent says why it will not use this relay",
    )
    assert "--max-frame-size (1048576)" in agent.log_tail()
    # The agent hung up (its redials are refused the same way, so the count drops back to 0).
    wait_until(
        lambda: relay_metric(chain, "fastrelay_connections", role="agent") == 0,
        what="the relay to see the refused agent leave",
    )
    agent.stop()
    chain.start_agent(*AGENT_ARGS, "--max-frame-size", "4MiB")  # waits until it is ready
    wait_until(
        lambda: metric(relay.ready["admin"], "fastrelay_connections", role="agent") == 1,
        what="an agent whose limit matches connects",
    )


# --- 3. one token at its connection limit ---

TOKEN_A = "second-client-token-for-isolation"
PER_TOKEN = 5


def test_one_token_at_its_connection_limit_does_not_lock_out_another(
    make_chain, target: Target, rules_file: Path, tmp_path: Path
) -> None:
    tokens = tmp_path / "client-tokens"
    tokens.write_text(TOKEN_A + "\n")
    chain = make_chain()
    relay = chain.start_relay(
        "--max-connections-per-token", str(PER_TOKEN), "--client-tokens-file", str(tokens)
    )
    chain.start_agent(*AGENT_ARGS)
    listen = relay.ready["listen"]
    held: list[socket.socket] = []
    try:
        for _ in range(PER_TOKEN):
            held.append(open_websocket(listen, "/v1/client", TOKEN_A))
        answer = raw_exchange(listen, upgrade_request("/v1/client", TOKEN_A))
        status_line, _, body = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 429 "), answer[:300]
        message = f"too many connections for this token (limit {PER_TOKEN})".encode()
        assert message in body, answer[:300]
        assert limit_hits(chain, "connections_per_token") >= 1
        assert relay_metric(chain, "fastrelay_connections", role="client") == PER_TOKEN

        # Token B (the chain's client_a token) connects and carries tunnels.
        client = chain.start_client(rules_file)  # waits for its /readyz to say 200
        ok, detail = fetch(chain.proxy, target)
        assert ok, detail
        assert relay_metric(chain, "fastrelay_connections", role="client") == (
            PER_TOKEN + CLIENT_CARRIERS
        )
        assert client.alive()

        # A freed slot is token A's again.
        held.pop().close()
        wait_until(
            lambda: (
                relay_metric(chain, "fastrelay_connections", role="client")
                == PER_TOKEN - 1 + CLIENT_CARRIERS
            ),
            what="the relay noticing the closed WebSocket",
        )
        held.append(open_websocket(listen, "/v1/client", TOKEN_A))
    finally:
        for sock in held:
            sock.close()


# --- 4. a frozen or a rogue agent ---

OPENS = 20


def test_a_frozen_agent_does_not_attract_opens(
    make_chain, target: Target, rules_file: Path
) -> None:
    chain = make_chain()
    chain.start_relay()
    chain.start_agent(*AGENT_ARGS)
    frozen = chain.start_agent(*AGENT_ARGS)
    chain.start_client(rules_file)
    wait_until(
        lambda: relay_metric(chain, "fastrelay_connections", role="agent") == 2,
        what="both agents connected",
    )
    retries = relay_metric(chain, "fastrelay_open_retries_total")
    stalled = relay_metric(chain, "fastrelay_agent_stalls_total")
    try:
        frozen.signal(signal.SIGSTOP)
        failures = fetch_many(chain.proxy, target, OPENS, parallel=4)
        assert process_state(frozen.pid) == "T", "premise: the agent stayed frozen"
    finally:
        frozen.signal(signal.SIGCONT)
    assert failures == [], f"{len(failures)} of {OPENS} opens failed: {failures[:3]}"
    moved = relay_metric(chain, "fastrelay_open_retries_total") - retries
    assert relay_metric(chain, "fastrelay_agent_stalls_total") > stalled
    assert 1 <= moved < OPENS / 2, f"{moved:g} of {OPENS} opens went to the frozen agent"


async def rogue_agent_run(chain: Chain, target: Target) -> tuple[list[str], int, int]:
    """A raw agent that reads HELLO and never answers (picows still answers
    pings); OPENS tunnels through client_a meanwhile. The failures, and the
    CONNECT and TUNNEL_ERROR frames the rogue received."""
    transport, rogue = await ws_connect(
        RawClient,
        f"{chain.relay_url}/v1/agent",
        extra_headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
    )
    try:
        ftype, _sid, _body = await rogue.next(10)
        assert ftype == FrameType.HELLO
        failures = await asyncio.to_thread(fetch_many, chain.proxy, target, OPENS, 4)
        assert not rogue.close_code.done(), "premise: the rogue stayed connected"
        counts = {FrameType.CONNECT: 0, FrameType.TUNNEL_ERROR: 0}
        for _ in range(rogue.frames.qsize()):
            ftype, _sid, _body = rogue.frames.get_nowait()
            if ftype in counts:
                counts[ftype] += 1
        return failures, counts[FrameType.CONNECT], counts[FrameType.TUNNEL_ERROR]
    finally:
        transport.disconnect()


def test_a_rogue_agent_that_never_answers_gets_a_minority_of_opens(
    make_chain, target: Target, rules_file: Path
) -> None:
    chain = make_chain()
    chain.start_relay()
    chain.start_agent(*AGENT_ARGS)
    chain.start_client(rules_file)
    retries = relay_metric(chain, "fastrelay_open_retries_total")
    failures, opens, withdrawn = eventloop.run(rogue_agent_run(chain, target))
    assert failures == [], f"{len(failures)} of {OPENS} opens failed: {failures[:3]}"
    assert 1 <= opens < OPENS / 2, f"the rogue agent received {opens} of {OPENS} opens"
    # Each of them moved to the real agent, and the rogue was told so.
    assert withdrawn == opens
    assert relay_metric(chain, "fastrelay_open_retries_total") - retries >= opens


# --- 5. stream and open caps ---

STREAM_CAP = 3


async def open_raw_streams(chain: Chain, port: int, count: int) -> list[ConnectResponse]:
    """`count` opens on one raw client_a connection; every answer, in order."""
    transport, client, hello = await session(chain)
    try:
        answers: dict[int, ConnectResponse] = {}
        sids = [hello.stream_id_base + 1 + i for i in range(count)]
        for sid in sids:
            transport.send(WSMsgType.BINARY, open_frame(sid, LISTED, port))
        for _ in range(4 * count):
            if len(answers) == count:
                break
            ftype, sid, body = await client.next(15)
            if ftype == FrameType.CONNECT_RESPONSE:
                answers[sid] = ConnectResponse.decode(body)
        return [answers[sid] for sid in sids]
    finally:
        transport.disconnect()


def test_streams_per_connection_are_capped(make_chain, target: Target, rules_file: Path) -> None:
    chain = make_chain()
    chain.start_relay("--max-streams-per-connection", str(STREAM_CAP))
    agent = chain.start_agent(*AGENT_ARGS)
    client = chain.start_client(rules_file, "--carriers", "1")
    agent_admin = agent.ready["admin"]
    with listening() as silent:
        # The relay itself: one connection over the cap gets 503 stream_limit.
        hits = limit_hits(chain, "streams_per_connection")
        answers = eventloop.run(open_raw_streams(chain, silent.port, STREAM_CAP + 1))
        assert [a.status_code for a in answers] == [200] * STREAM_CAP + [503], answers
        assert answers[-1].reason == "stream_limit", answers[-1]
        assert limit_hits(chain, "streams_per_connection") == hits + 1
        wait_until(lambda: all_streams_idle(chain), what="the raw client's streams closed")

        # client_a on one carrier: three tunnels, the fourth refused with stream_limit.
        dials = metric(agent_admin, "fastrelay_agent_dials_total", result="ok")
        tunnels = []
        try:
            for _ in range(STREAM_CAP):
                tunnels.append(open_connect_via(client, LISTED, silent.port))
            why = refusal(client, LISTED, silent.port)
            assert " 503" in why and "(stream_limit)" in why, why
            assert metric(agent_admin, "fastrelay_agent_dials_total", result="ok") == (
                dials + STREAM_CAP
            )
            assert streams_active(agent) == STREAM_CAP
            # The agent holds three target sockets for them (and three were the raw client's).
            wait_until(lambda: silent.accepted() >= 2 * STREAM_CAP, what="the target sockets")
            assert silent.accepted() == 2 * STREAM_CAP
        finally:
            for sock in tunnels:
                sock.close()
        silent.hang_up()
        wait_until(lambda: all_streams_idle(chain), what="client_a's tunnels closed")
        # Ended tunnels give their room back: the whole cap opens again.
        echo = target.port(LISTED, "echo")
        again = []
        try:
            for _ in range(STREAM_CAP):
                again.append(open_connect_via(client, LISTED, echo))
        finally:
            for sock in again:
                sock.close()


OPEN_CAP = 2


def test_opens_in_flight_per_agent_are_capped(make_chain, target: Target, rules_file: Path) -> None:
    chain = make_chain()
    chain.start_relay("--max-opens-per-agent", str(OPEN_CAP), "--max-token-share", "1")
    agent = chain.start_agent(*AGENT_ARGS)
    client = chain.start_client(rules_file)
    hits = limit_hits(chain, "opens_per_agent")
    echo = target.port(LISTED, "echo")
    hole = Listener.blackhole()
    hanging: list[socket.socket] = []
    try:
        hang_dials(client, agent, hole, OPEN_CAP, hanging, f"{OPEN_CAP} dials hanging")
        why = refusal(client, LISTED, echo)
        assert " 503" in why and "(agent_busy)" in why, why
        assert limit_hits(chain, "opens_per_agent") == hits + 1
        assert streams_active(agent) == OPEN_CAP, "the refused open reached the agent"
    finally:
        for sock in hanging:
            sock.close()
        hole.close()
    # With the hanging dials gone, the agent takes opens again.
    wait_until(lambda: streams_active(agent) == 0, timeout=30, what="the hanging dials ended")
    ok, detail = fetch(chain.proxy, target)
    assert ok, detail


# --- 6. one tenant's share of an agent ---

SHARED_CAP = 4  # --max-opens-per-agent; each token may hold half: 2


def test_one_tenants_hanging_dials_leave_room_at_the_agent_for_another(
    make_chain, target: Target, rules_file: Path, tmp_path: Path
) -> None:
    """Tenant A (its own token, both its carriers) sends opens whose dials never
    answer. Without a per-token share they would fill the agent's open slots and
    tenant B would get 503 agent_busy; with it, A is refused at half and B's
    requests go through the same agent."""
    tokens = tmp_path / "client-tokens"
    tokens.write_text(TOKEN_A + "\n")
    chain = make_chain()
    chain.start_relay("--max-opens-per-agent", str(SHARED_CAP), "--client-tokens-file", str(tokens))
    agent = chain.start_agent(*AGENT_ARGS)
    tenant_b = chain.start_client(rules_file)
    tenant_a = chain.start_client(rules_file, token=TOKEN_A)
    echo = target.port(LISTED, "echo")
    hole = Listener.blackhole()
    hanging: list[socket.socket] = []
    share = SHARED_CAP // 2
    try:
        hang_dials(tenant_a, agent, hole, share, hanging, f"tenant A's {share} dials hanging")
        why = refusal(tenant_a, LISTED, echo)
        assert " 503" in why and "(token_share)" in why, why
        assert f"{share} of each agent's {SHARED_CAP} opens in flight" in why, why
        # Once: every carrier of tenant A's client_a is on this relay, so no retry.
        assert limit_hits(chain, "token_opens") == 1
        assert limit_hits(chain, "opens_per_agent") == 0
        assert streams_active(agent) == share, "the refused open reached the agent"

        # Tenant B, on the same relay and agent, is untouched: a request, and dials
        # of its own up to its share.
        ok, detail = fetch(f"http://{tenant_b.ready['listen']}", target)
        assert ok, detail
        hang_dials(tenant_b, agent, hole, share, hanging, "tenant B's dials hanging too")
        assert len(hanging) == SHARED_CAP
    finally:
        for sock in hanging:
            sock.close()
        hole.close()
    # With the hanging dials gone, tenant A's share is free again.
    wait_until(lambda: streams_active(agent) == 0, timeout=30, what="the hanging dials ended")
    open_connect_via(tenant_a, LISTED, echo).close()
