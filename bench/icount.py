"""CPU instructions per message on the hot path, compiled and pure Python, under callgrind.

    PYTHONPATH=$PWD .venv/bin/python -m bench.icount [--ops 20000] [--only NAME ...]

Time on this 2-core machine moves with whatever else runs; callgrind's instruction count
does not (the same count twice, whatever the other core does). Each scenario is run in a
fresh interpreter under `valgrind --tool=callgrind` twice, once with 0 operations and once
with `--ops`, and the difference divided by `--ops` is the instructions one operation
costs, set-up and interpreter start excluded. That is done on the compiled hot path and
with FASTRELAY_PURE_PYTHON=1 (fastrelay/hotpath.py), and the ratio is reported.

The scenarios drive the real code with the micro-benchmarks' socket-free rigs
(bench/micro/conftest.py, bench/micro/endpoint_rig.py):

- relay_data: one WebSocket message of one 100 B TUNNEL_DATA frame, through the relay's
  `Peer.on_ws_frame` (a picows WSFrame, the switch, the MuxWriter flush), upstream;
- relay_data_down: the same downstream, from the agent to client_a (a frame from an agent
  finds its stream through the client_a that holds its stream-id range);
- relay_window_update: the same with one WINDOW_UPDATE (the control path);
- endpoint_receive: one message of one 100 B frame handed to an endpoint's carrier
  (read_frame, the stream, the write to its socket, the flush);
- endpoint_read: one 100 B read from a stream's TCP socket into a mux frame, flushed.

And the control messages of an open (the codec and the browser's head, no rig), each
done once per open by one or two of the three programs:

- open_head: client_a's parse of a browser's CONNECT head (RequestHeadParser, 99 B);
- open_encode / open_decode: a CONNECT frame's OpenStream, as client_a writes it and as
  the relay and the agent read it;
- answer_encode / answer_decode: a CONNECT_RESPONSE of 200, as the agent writes it and
  as the relay and client_a read it;
- switch_open: one stream's whole life in the relay's switch, I/O left out: client_a's
  CONNECT, the agent's CONNECT_RESPONSE, a FIN each way (the stream ends).

Instructions are not seconds (a cache miss costs more than an add), but for the
interpreter-bound per-message path they follow CPU time closely.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable

SCENARIOS = (
    "relay_data",
    "relay_data_down",
    "relay_window_update",
    "endpoint_receive",
    "endpoint_read",
    "open_head",
    "open_encode",
    "open_decode",
    "answer_encode",
    "answer_decode",
    "switch_open",
)
REFILL_EVERY = 1000  # ops between credit refills (untimed in the micro-benchmarks)


def _relay_op(kind: str) -> tuple[Callable[[], None], Callable[[], None]]:
    from picows import WSMsgType
    from picows.picows import _make_test_ws_frame

    from bench.micro.conftest import Rig, Tunnel
    from fastrelay.protocol.frames import FrameType, encode_frame, encode_window_update

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    tunnel = Tunnel(Rig(loop))
    if kind == "relay_window_update":
        payload = encode_window_update(tunnel.sid, 4096)
    else:
        payload = encode_frame(FrameType.TUNNEL_DATA, tunnel.sid, b"x" * 100)
    frame = _make_test_ws_frame(WSMsgType.BINARY, payload, True, False)
    if kind == "relay_data_down":
        peer, transport, dest = tunnel.agent, tunnel.agent_t, tunnel.client_t
    else:
        peer, transport, dest = tunnel.client, tunnel.client_t, tunnel.agent_t
    on_ws_frame = peer.on_ws_frame

    def op() -> None:
        on_ws_frame(transport, frame)

    # The frame went through to the other side, whole (a check, before anything is counted).
    tunnel.refill()
    dest.reset()
    op()
    assert dest.sends == 1 and dest.nbytes == len(payload), (dest.sends, dest.nbytes)
    return op, tunnel.refill


def _endpoint_op(kind: str) -> tuple[Callable[[], None], Callable[[], None]]:
    from bench.micro.endpoint_rig import EndpointRig
    from fastrelay.protocol.frames import FrameType, encode_frame

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    rig = EndpointRig(loop)
    flush_all = rig.flush_all
    if kind == "endpoint_receive":
        message = memoryview(encode_frame(FrameType.TUNNEL_DATA, rig.sid, b"x" * 100))
        receive = rig.receive

        def op() -> None:
            receive(message)
            flush_all()

    else:
        read = rig.read

        def op() -> None:
            read(100)
            flush_all()

    return op, rig.refill


def _open_op(kind: str) -> tuple[Callable[[], None], Callable[[], None]]:
    from fastrelay.protocol.frames import HEADER_SIZE, FrameType
    from fastrelay.protocol.http import RequestHeadParser
    from fastrelay.protocol.messages import ConnectResponse, OpenStream, new_session_id

    session_id = new_session_id()
    message = OpenStream(FrameType.CONNECT, session_id, "127.0.0.2", 9000, headers={})
    answer = ConnectResponse(session_id, 200, window=4 * 1024 * 1024)
    head = (
        b"CONNECT 127.0.0.2:9000 HTTP/1.1\r\nHost: 127.0.0.2:9000\r\n"
        b"User-Agent: curl/8.5.0\r\nProxy-Connection: Keep-Alive\r\n\r\n"
    )
    open_payload = memoryview(message.encode(1))[HEADER_SIZE:]
    answer_payload = memoryview(answer.encode(1))[HEADER_SIZE:]
    ops: dict[str, Callable[[], object]] = {
        "open_head": lambda: RequestHeadParser().feed(head),
        "open_encode": lambda: message.encode(1, 1024 * 1024),
        "open_decode": lambda: OpenStream.decode(FrameType.CONNECT, open_payload),
        "answer_encode": lambda: answer.encode(1),
        "answer_decode": lambda: ConnectResponse.decode(answer_payload),
    }
    run = ops[kind]
    assert run() is not None  # each one does its work (a request, a frame, a message)

    def op() -> None:
        run()

    return op, lambda: None


def _switch_op(kind: str) -> tuple[Callable[[], None], Callable[[], None]]:
    from fastrelay.protocol.frames import FrameType, encode_frame
    from fastrelay.protocol.messages import ConnectResponse, OpenStream, new_session_id
    from fastrelay.protocol.pair import Discard
    from fastrelay.protocol.switch import Conn, Limits, Switch

    switch = Switch(Limits(), "icount")
    client, agent = Conn("client", Discard(), Discard()), Conn("agent", Discard(), Discard())
    assert switch.attach(client, 1.0) and switch.attach(agent, 1.0)
    sid, session_id = client.id_base + 1, new_session_id()
    request = OpenStream(FrameType.CONNECT, session_id, "127.0.0.2", 9000, headers={})
    steps = [
        (client, memoryview(request.encode(sid, 4 * 1024 * 1024))),
        (agent, memoryview(ConnectResponse(session_id, 200, window=4 * 1024 * 1024).encode(sid))),
        (client, memoryview(encode_frame(FrameType.FIN, sid, b""))),
        (agent, memoryview(encode_frame(FrameType.FIN, sid, b""))),
    ]
    receive = switch.receive

    def op() -> None:
        for conn, message in steps:
            receive(conn, message, 1.0)

    op()
    assert switch.stats.results["ok"] == 1 and not switch.active_streams  # answered, ended
    return op, lambda: None


def run_ops(scenario: str, ops: int) -> None:
    """The child: build the rig, run `ops` operations, exit."""
    if scenario.startswith("relay"):
        build = _relay_op
    elif scenario.startswith("endpoint"):
        build = _endpoint_op
    elif scenario == "switch_open":
        build = _switch_op
    else:
        build = _open_op
    op, refill = build(scenario)
    for i in range(ops):
        if i % REFILL_EVERY == 0:
            refill()
        op()


def count(scenario: str, ops: int, pure: bool) -> int:
    """Instructions callgrind collected for a child running `ops` operations."""
    env = dict(os.environ)
    env.pop("FASTRELAY_PURE_PYTHON", None)
    # String hashing is randomised per process, and dict layouts with it: unseeded, the
    # two runs' set-up differs by up to a few million instructions, which is +-1,000 per
    # operation at --ops 3000. One seed for both runs takes that out.
    env.setdefault("PYTHONHASHSEED", "0")
    if pure:
        env["FASTRELAY_PURE_PYTHON"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out"),
                *(sys.executable, "-m", "bench.icount", "--child", scenario, "--ops", str(ops)),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
            check=False,
        )
    found = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    if out.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run of {scenario} failed:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def per_op(scenario: str, ops: int, pure: bool) -> float:
    return (count(scenario, ops, pure) - count(scenario, 0, pure)) / ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.icount", description=__doc__)
    parser.add_argument("--ops", type=int, default=20000, help="operations per measured run")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_ops(args.child, args.ops)
        return 0
    print("| scenario | compiled, instructions/op | pure Python | compiled / pure |")
    print("|---|---|---|---|")
    for scenario in args.only:
        compiled = per_op(scenario, args.ops, pure=False)
        pure = per_op(scenario, args.ops, pure=True)
        print(f"| {scenario} | {compiled:,.0f} | {pure:,.0f} | {compiled / pure:.2f} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
