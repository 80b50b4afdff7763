"""Head-of-line isolation: one tunnel whose reader never reads must not slow
the others down, and per-stream flow control must bound what the relay holds.

    stalled socket --CONNECT--> client_a -> relay -> agent -> target /bytes/200000000
    9 x curl       --CONNECT--> client_a -> relay -> agent -> target /bytes/20000000
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import LISTED, Chain, Proc, Target, curl_path
from support.procs import (
    AGENT_TOKEN,
    CLIENT_TOKEN,
    ROOT,
    agent_argv,
    is_ready,
    metric,
    wait_until,
)
from support.target import pattern_bytes, pattern_sha256

from fastrelay import eventloop
from fastrelay.config import ENDPOINT_WINDOW
from fastrelay.io.carrier import (
    NOTSENT_LOWAT,
    TCP_NOTSENT_LOWAT,
    Carrier,
    CarrierStats,
    RelayLink,
)

STALLED_SIZE = 200_000_000  # far more than the memory bound below
SIZE = 20_000_000
PARALLEL = 9
WINDOW = ENDPOINT_WINDOW  # what one stream may have in flight per direction
SLACK = 32 * 1024 * 1024
MiB = 1024 * 1024


def memory(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak since start) of a process, in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def streams_active(proc: Proc) -> float:
    return metric(proc.ready["admin"], "fastrelay_streams_active")


def stalls(proc: Proc) -> float:
    return metric(proc.ready["admin"], "fastrelay_flow_control_stalls_total")


def open_stalled(chain: Chain, target: Target) -> socket.socket:
    """A CONNECT tunnel with a 200 MB response coming that nobody reads."""
    host, _, port = chain.clients[0].ready["listen"].rpartition(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(30)
    sock.connect((host, int(port)))
    http_port = target.port(LISTED, "http")
    authority = f"{LISTED}:{http_port}"
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)  # byte by byte: leave the tunnel's bytes unread
        assert chunk, head
        head += chunk
    assert head.split()[1] == b"200", head
    sock.sendall(f"GET /bytes/{STALLED_SIZE} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    return sock


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.timeout(240)
def test_stalled_reader_does_not_block_other_tunnels(
    chain: Chain, target: Target, tmp_path: Path
) -> None:
    assert chain.relay is not None
    agent, client = chain.agents[0], chain.clients[0]
    procs = [chain.relay, agent, client]
    baseline = {p.name: memory(p.pid, "VmRSS") for p in procs}
    agent_stalls = stalls(agent)

    stalled = open_stalled(chain, target)
    try:
        # The agent ran out of credit for the stalled stream: it is really stalled.
        wait_until(lambda: stalls(agent) > agent_stalls, timeout=15, what="the stall")

        started = time.monotonic()
        curls = []
        for seed in range(1, PARALLEL + 1):
            out = tmp_path / f"dl-{seed}.bin"
            url = target.https(LISTED, f"/bytes/{SIZE}?seed={seed}")
            argv = [curl_path(), "-sS", "--max-time", "90", "--cacert", str(target.ca_pem)]
            argv += ["-x", chain.proxy, "-o", str(out), url]
            curls.append((seed, out, subprocess.Popen(argv, stderr=subprocess.PIPE)))
        try:
            for seed, _out, proc in curls:
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, f"download {seed}: {err.decode()}"
        finally:
            for _seed, _out, proc in curls:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
        elapsed = time.monotonic() - started
        for seed, out, _proc in curls:
            assert out.stat().st_size == SIZE, f"download {seed}"
            assert file_sha256(out) == pattern_sha256(SIZE, seed), f"download {seed}"

        # The stalled tunnel is still open at every hop, and still intact.
        assert streams_active(chain.relay) >= 1
        assert streams_active(client) >= 1 and streams_active(agent) >= 1
        # Per-stream credit bounds what every hop holds, the stalled stream's
        # 200 MB included. VmHWM is the peak resident size, not a sample.
        bound = 2 * WINDOW * (PARALLEL + 1) + SLACK
        print(f"{PARALLEL} x {SIZE} B in {elapsed:.1f} s beside a stalled tunnel")
        for proc in procs:
            peak = memory(proc.pid, "VmHWM")
            growth = peak - baseline[proc.name]
            print(
                f"{proc.name}: RSS {baseline[proc.name] / MiB:.1f} MiB -> peak"
                f" {peak / MiB:.1f} MiB (+{growth / MiB:.1f}, bound {bound / MiB:.0f} MiB)"
            )
            assert growth < bound, (
                f"{proc.name} RSS grew by {growth / MiB:.1f} MiB, more than flow control"
                f" allows ({bound / MiB:.0f} MiB)"
            )
        first = b""
        while b"\r\n\r\n" not in first:
            chunk = stalled.recv(65536)
            assert chunk, "the stalled tunnel was closed"
            first += chunk
        head, _, body = first.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
        while len(body) < 4 * MiB:
            chunk = stalled.recv(65536)
            assert chunk, "the stalled tunnel was closed"
            body += chunk
        assert body == pattern_bytes(len(body)), "the stalled stream's bytes are not intact"
    finally:
        stalled.close()

    wait_until(
        lambda: all(streams_active(p) == 0 for p in procs),
        timeout=15,
        what="streams_active back to 0 at relay, agent and client_a",
    )


# --- an agent behind a slow link: windows that follow the path's delay ---

LINK_RATE = 10_000_000  # bytes per second each way between the relay and the agent
UPLOAD = 30_000_000


def start_slow_agent(chain: Chain) -> Proc:
    """A relay, and an agent that reaches it through bench/delayline.py: LINK_RATE
    each way, 10 ms, 1 MiB held in the line."""
    relay = chain.start_relay()
    line = Proc(
        "delayline",
        [
            *(sys.executable, "-m", "bench.delayline", "--listen", "127.0.0.1:0"),
            *("--to", relay.ready["listen"], "--rtt-ms", "10", "--cap", "1MiB"),
            *("--rate", str(LINK_RATE)),
        ],
        {"PYTHONPATH": str(ROOT)},
        chain.log_dir,
    )
    chain.procs.append(line)
    agent = Proc(
        "agent",
        agent_argv(f"ws://{line.ready['listen']}", "--allow", "127.0.0.0/8"),
        {"FASTRELAY_TOKEN": AGENT_TOKEN},
        chain.log_dir,
    )
    chain.procs.append(agent)
    chain.agents.append(agent)
    wait_until(lambda: is_ready(agent.ready["admin"]), what="agent connected through the line")
    return agent


def bulk_beside_another_request(
    chain: Chain, target: Target, agent: Proc, bulk: list[str], counter: str
) -> tuple[bytes, bytes]:
    """Run `bulk` (curl arguments after the proxy's) until the agent's `counter`
    moves, then another request through the same agent, which must succeed
    meanwhile; the bulk's stdout and stderr once it ends, which it must do well."""
    curl = [*(curl_path(), "-sS", "--cacert", str(target.ca_pem), "-x", chain.proxy)]
    transfer = subprocess.Popen(
        [*curl, "--max-time", "120", *bulk], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    admin = agent.ready["admin"]
    try:
        wait_until(
            lambda: metric(admin, counter) >= 1 or transfer.poll() is not None,
            timeout=60,
            what=f"the agent's {counter} to move",
        )
        other = subprocess.run(
            [
                *(*curl, "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code}"),
                target.https(LISTED, "/bytes/1000"),
            ],
            capture_output=True,
            timeout=60,
        )
        assert other.stdout == b"200", other.stderr
        out, err = transfer.communicate(timeout=150)
    finally:
        if transfer.poll() is None:
            transfer.kill()
            transfer.communicate()
    assert transfer.returncode == 0, err.decode(errors="replace")
    return out, err


def queued_answers(admin: str, direction: str) -> tuple[float, float]:
    """The agent's probe answers in one direction: how many, and how many timed
    more than 25 ms of queue (fastrelay_path_queueing_seconds)."""
    name = "fastrelay_path_queueing_seconds"
    timed = metric(admin, f"{name}_count", role="agent", direction=direction)
    calm = metric(admin, f"{name}_bucket", role="agent", direction=direction, le="0.025")
    return timed, timed - calm


def test_an_upload_to_an_agent_behind_a_slow_link_cuts_the_agents_windows_and_arrives_whole(
    make_chain, target: Target, rules_file: Path, tmp_path: Path
) -> None:
    """bench/delayline.py between the relay and the agent: 10 MB/s, 10 ms. The
    agent's windows would grow to --max-window on an upload that never runs out of
    data, and the relay would queue that much ahead of every other open to the
    agent (bench/hol_probe). The agent's probes see the way from the relay queue
    and cut them; the upload arrives whole and other requests still go through."""
    chain = make_chain()
    agent = start_slow_agent(chain)
    chain.start_client(rules_file)
    body = tmp_path / "up.bin"
    body.write_bytes(pattern_bytes(UPLOAD, seed=5))
    out, _ = bulk_beside_another_request(
        chain,
        target,
        agent,
        [
            *("--data-binary", f"@{body}", "-H", "Content-Type: application/octet-stream"),
            target.https(LISTED, "/sha256"),
        ],
        "fastrelay_window_backoffs_total",
    )
    assert json.loads(out) == {"sha256": pattern_sha256(UPLOAD, seed=5), "length": UPLOAD}
    admin = agent.ready["admin"]
    assert metric(admin, "fastrelay_window_backoffs_total") >= 1
    assert metric(admin, "fastrelay_window_growths_total") >= 1
    # Every probe's answer is in the histograms, by direction (the relay stamps
    # them): the queue showed on the way from the relay, more than on the way to it.
    timed, queued = queued_answers(admin, "from_relay")
    assert timed >= 2 and queued >= 1
    quiet_timed, quiet_queued = queued_answers(admin, "to_relay")
    assert quiet_timed == timed and quiet_queued < queued
    assert queued_answers(admin, "round_trip") == (0, 0)


def test_a_download_from_an_agent_behind_a_slow_link_caps_what_it_sends_and_arrives_whole(
    make_chain, target: Target, rules_file: Path, tmp_path: Path
) -> None:
    """The other direction: client_a's window for a download grows (its own path
    to the relay is fast), and the agent would queue all of it on the slow link
    ahead of its answers to everyone else's opens. The agent's probes cross that
    queue, so it caps what the stream has unacknowledged; the download arrives
    whole and another request still goes through meanwhile."""
    chain = make_chain()
    agent = start_slow_agent(chain)
    chain.start_client(rules_file)
    out = tmp_path / "down.bin"
    bulk_beside_another_request(
        chain,
        target,
        agent,
        ["-o", str(out), target.https(LISTED, f"/bytes/{UPLOAD}?seed=9")],
        "fastrelay_send_backoffs_total",
    )
    assert out.stat().st_size == UPLOAD
    assert file_sha256(out) == pattern_sha256(UPLOAD, seed=9)
    admin = agent.ready["admin"]
    assert metric(admin, "fastrelay_send_backoffs_total") >= 1
    timed, queued = queued_answers(admin, "to_relay")
    assert timed >= 2 and queued >= 1
    quiet_timed, quiet_queued = queued_answers(admin, "from_relay")
    assert quiet_timed == timed and quiet_queued < queued


def test_a_relay_connection_keeps_little_unsent_data_in_the_kernel(make_chain) -> None:
    """The carrier (client_a's and the agent's relay connection) caps the kernel's
    unsent bytes with TCP_NOTSENT_LOWAT, so what waits for a slow link waits in user
    space, where the streams are paused, and not in megabytes of socket buffer."""
    chain = make_chain()
    relay = chain.start_relay()

    async def main() -> int:
        stats = CarrierStats()
        link = RelayLink(
            f"ws://{relay.ready['listen']}/v1/client", "client", CLIENT_TOKEN, None, 20, 1 << 20, 1,
            1 << 20,
        )  # fmt: skip
        owner = SimpleNamespace(
            carrier_goaway=lambda c: None, carrier_members=lambda c, m: None,
            carrier_lost=lambda c: None,
        )  # fmt: skip
        carrier = Carrier(link, handler=None, owner=owner, stats=stats)  # type: ignore[arg-type]
        await carrier.open()
        try:
            assert carrier.transport is not None
            sock = carrier.transport.underlying_transport.get_extra_info("socket")
            return int(sock.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT))
        finally:
            await carrier.aclose()

    assert eventloop.run(main()) == NOTSENT_LOWAT
