"""Host names the resolver cannot encode, and look-alikes of denied names (issue 10, items 1-2).

Names that IDNA cannot encode used to raise UnicodeError out of the agent's open: no
CONNECT_RESPONSE, a 504 after the relay's timeout and a traceback per request. They now get a
502 (reason ``dns``) at once, naming the problem, on the relay route and on the direct route
alike. A look-alike of a denied name (``rt-loop.test`` with a fullwidth r) is normalised before
the policy, so it is denied like the name: 403.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import LISTED, Chain
from helpers import raw_exchange, response_head
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from support.procs import CLIENT_TOKEN, metric

from fastrelay import eventloop
from fastrelay.protocol.frames import FrameType, iter_frames
from fastrelay.protocol.messages import ConnectResponse, Hello, OpenStream

DENIED_NAME = "rt-loop.test"
LOOK_ALIKE = "\uff52t-loop.test"  # fullwidth r (U+FF52): IDNA maps it to rt-loop.test

# (host, problem named in the answer). All end in .test, so client_a's rules send them
# through the relay, except "x.test.." (".test" does not match it): that takes the direct route.
BAD_NAMES = [
    pytest.param("a..b.test", "empty label", id="empty-label"),
    pytest.param("x.test..", "empty label", id="two-trailing-dots-direct"),
    pytest.param("a" * 64 + ".test", "longer than 63 characters", id="label-64"),
    pytest.param("a." * 146 + "test", "longer than 253 characters", id="name-296"),
    pytest.param("b" * 300 + ".test", "longer than 63 characters", id="label-300"),
]


@pytest.fixture(scope="module")
def name_chain(tmp_path_factory: pytest.TempPathFactory):
    """client_a sends every .test name through the relay; the agent denies rt-loop.test."""
    rules = tmp_path_factory.mktemp("names") / "rules.txt"
    rules.write_text(f".test\n{LISTED}/32\n")
    chain = Chain(tmp_path_factory.mktemp("chain-logs"))
    try:
        # A long relay timeout: an open the agent never answers would be a 504, not a 502.
        chain.start_relay("--connect-timeout", "20")
        chain.start_agent("--allow", "127.0.0.0/8", "--deny", DENIED_NAME)
        chain.start_client(rules)
        yield chain
    finally:
        chain.stop()


def connect(chain: Chain, host: str, port: int = 443) -> tuple[int, str]:
    """Send a CONNECT for host:port through client_a: its status and body."""
    head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    reply = raw_exchange(chain.clients[0].ready["listen"], head, timeout=60)
    status, _headers = response_head(reply)
    return status, reply.partition(b"\r\n\r\n")[2].decode("utf-8", errors="replace")


def dials(chain: Chain, result: str) -> float:
    return metric(chain.agents[0].ready["admin"], "fastrelay_agent_dials_total", result=result)


def assert_no_traceback(chain: Chain) -> None:
    for proc in chain.procs:
        log = proc.log_path.read_text(errors="replace")
        assert "Traceback" not in log, f"{proc.name}:\n{log[-3000:]}"
        assert "UnicodeError" not in log, f"{proc.name}:\n{log[-3000:]}"


@pytest.mark.parametrize(("host", "problem"), BAD_NAMES)
def test_name_that_cannot_be_encoded_gets_502(name_chain: Chain, host: str, problem: str) -> None:
    relayed = host.endswith(".test")
    before = dials(name_chain, "dns")
    status, body = connect(name_chain, host)
    assert status == 502, body
    assert body.startswith("invalid host "), body
    assert problem in body
    if relayed:  # the agent answered, with reason dns, and counted it
        assert body.rstrip().endswith("(dns)"), body
        assert dials(name_chain, "dns") == before + 1
    assert body.count("\n") == 1 and len(body) < 300  # one short line
    assert_no_traceback(name_chain)


def test_look_alike_of_denied_name_from_the_browser_is_a_clear_400(name_chain: Chain) -> None:
    # client_a's request parser takes only ASCII in the request target: a raw UTF-8
    # look-alike never reaches the relay. (curl itself would send the IDNA form.)
    status, body = connect(name_chain, LOOK_ALIKE)
    assert status == 400, body
    assert body.startswith("malformed request head"), body
    status, body = connect(name_chain, DENIED_NAME)
    assert status == 403, body
    assert "denied by --deny rt-loop.test" in body
    assert_no_traceback(name_chain)


async def open_through_relay(url: str, host: str, port: int) -> ConnectResponse:
    """Connect to the relay as a client_a and open one CONNECT stream: the agent's answer."""
    loop = asyncio.get_running_loop()
    hello: asyncio.Future[Hello] = loop.create_future()
    answer: asyncio.Future[ConnectResponse] = loop.create_future()

    class Listener(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type != WSMsgType.BINARY:
                return
            message = frame.get_payload_as_bytes()
            for kind, _flags, _sid, start, length in iter_frames(message):
                payload = message[start : start + length]
                if kind == FrameType.HELLO and not hello.done():
                    hello.set_result(Hello.decode(payload))
                elif kind == FrameType.CONNECT_RESPONSE and not answer.done():
                    answer.set_result(ConnectResponse.decode(payload))

    headers = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
    transport, _ = await ws_connect(Listener, f"{url}/v1/client", extra_headers=headers)
    try:
        first = await asyncio.wait_for(hello, 10)
        request = OpenStream(FrameType.CONNECT, "look-alike-session", host, port)
        transport.send(WSMsgType.BINARY, request.encode(first.stream_id_base))
        return await asyncio.wait_for(answer, 30)
    finally:
        transport.disconnect()
        await asyncio.wait_for(transport.wait_disconnected(), 5)


@pytest.mark.parametrize(
    "host",
    [LOOK_ALIKE, "RT-LOOP.TEST.", "rt-loop\u3002test"],
    ids=["fullwidth-r", "case-dot", "ideographic-stop"],
)
def test_look_alike_of_denied_name_at_the_agent_gets_403(name_chain: Chain, host: str) -> None:
    """Past client_a (a relay client of its own), the agent normalises the name before its
    policy: the look-alike is denied by the name deny, never looked up or dialled."""
    before = dials(name_chain, "denied")
    assert name_chain.relay is not None
    url = f"ws://{name_chain.relay.ready['listen']}"
    response = eventloop.run(open_through_relay(url, host, 443))
    assert response.status_code == 403, response
    assert response.reason == "denied"
    assert response.error == "egress policy: denied by --deny rt-loop.test"
    assert dials(name_chain, "denied") == before + 1
    assert_no_traceback(name_chain)
