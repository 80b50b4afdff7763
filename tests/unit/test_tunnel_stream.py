"""TunnelStream flow control and ends, against a fake carrier and a fake socket."""

from __future__ import annotations

import asyncio

import pytest

from fastrelay.io.carrier import Carrier, CarrierStats, RelayLink
from fastrelay.io.tunnel import AGENT_SIDE, CLIENT_SIDE, TCP_LOW_WATER, TunnelStream
from fastrelay.protocol.errors import FlowControlError, StreamError
from fastrelay.protocol.frames import FrameType, decode_window_increment, encode_frame, iter_frames
from fastrelay.protocol.messages import TunnelError
from fastrelay.protocol.state import State

SID = 1 << 20
DATA, FIN, WINDOW, ERROR = (
    FrameType.TUNNEL_DATA,
    FrameType.FIN,
    FrameType.WINDOW_UPDATE,
    FrameType.TUNNEL_ERROR,
)


class FakeCarrier:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.stats = CarrierStats()
        self.forgotten: list[TunnelStream] = []
        self.paused = False  # the WebSocket's backlog is over its high-water mark
        self.waiting: list[TunnelStream] = []
        self.credit = None  # no pool: every window stays as given

    def wait_for_room(self, stream: TunnelStream) -> None:  # as Carrier does
        stream.carrier_paused(True)
        self.waiting.append(stream)

    def resume(self) -> None:  # Carrier.set_paused(False)
        self.paused = False
        waiting, self.waiting = self.waiting, []
        for stream in waiting:
            stream.carrier_paused(False)

    def send(self, frames: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(frames))

    write = send  # stands in for a real Carrier's MuxWriter too

    def forget(self, stream: TunnelStream) -> None:
        self.forgotten.append(stream)

    def frames(self) -> list[tuple[FrameType, bytes]]:
        """Every frame sent so far, as (type, payload); all must be for SID."""
        out = []
        for message in self.sent:
            view = memoryview(message)
            for ftype, _flags, sid, off, length in iter_frames(view):
                assert sid == SID
                out.append((FrameType(ftype), bytes(view[off : off + length])))
        return out


def data_sent(frames: list[tuple[FrameType, bytes]]) -> bytes:
    return b"".join(payload for ftype, payload in frames if ftype is DATA)


def window_updates(carrier: FakeCarrier) -> list[int]:
    return [decode_window_increment(p) for t, p in carrier.frames() if t is WINDOW]


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.calls: list[str] = []
        self.closing = False
        self.limits: tuple[int, int] | None = None

    def write(self, data) -> None:
        assert not self.closing
        self.written += data

    def write_eof(self) -> None:
        self.calls.append("write_eof")

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")

    def close(self) -> None:
        self.calls.append("close")
        self.closing = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def get_write_buffer_size(self) -> int:
        return 0


def make(
    send_window: int = 1000, recv_window: int = 4000, side=CLIENT_SIDE, open_it: bool = True
) -> tuple[TunnelStream, FakeCarrier, FakeTransport]:
    carrier, tcp = FakeCarrier(), FakeTransport()
    stream = TunnelStream(carrier, SID, "sess", side, State.CONNECT_REQUEST, recv_window)  # type: ignore[arg-type]
    stream.attach_tcp(tcp)  # type: ignore[arg-type]
    assert tcp.limits == (TCP_LOW_WATER, TCP_LOW_WATER)
    assert tcp.calls == []  # reading stays paused until the open succeeds
    if open_it:
        stream.opened(send_window)
        assert tcp.calls == ["resume_reading"]
        tcp.calls.clear()
    return stream, carrier, tcp


def test_data_beyond_credit_is_held_back_until_a_grant() -> None:
    stream, carrier, tcp = make(send_window=1000)
    payload = bytes(range(256)) * 10  # 2560 bytes
    stream.tcp_data(payload[:2000])
    assert data_sent(carrier.frames()) == payload[:1000]
    assert tcp.calls == ["pause_reading"]
    assert carrier.stats.flow_control_stalls == 1
    stream.tcp_data(payload[2000:])  # a read that was already in flight
    assert data_sent(carrier.frames()) == payload[:1000]
    stream.grant(1000)
    assert data_sent(carrier.frames()) == payload[:2000]
    assert tcp.calls == ["pause_reading"]  # still 560 bytes held back
    stream.grant(560)  # exactly the backlog: sent, but no credit left to read more
    assert data_sent(carrier.frames()) == payload
    assert tcp.calls == ["pause_reading"]
    stream.grant(1)
    assert tcp.calls == ["pause_reading", "resume_reading"]
    assert stream.send_window.available == 1
    assert stream.bytes_out == len(payload)


def test_a_full_websocket_pauses_a_stream_after_its_read_and_resumes_it() -> None:
    stream, carrier, tcp = make(send_window=1 << 20)
    stream.tcp_data(b"a" * 100)
    assert tcp.calls == [] and carrier.waiting == []  # a free carrier pauses nobody
    carrier.paused = True
    stream.tcp_data(b"b" * 100)  # this read still goes out: it is within credit
    assert data_sent(carrier.frames()) == b"a" * 100 + b"b" * 100
    assert tcp.calls == ["pause_reading"] and carrier.waiting == [stream]
    stream.tcp_data(b"c" * 100)  # a read that was in flight: sent, no second pause
    assert tcp.calls == ["pause_reading"] and carrier.waiting == [stream]
    carrier.resume()
    assert tcp.calls == ["pause_reading", "resume_reading"]
    assert data_sent(carrier.frames()).endswith(b"c" * 100)


def test_tcp_eof_while_held_back_sends_fin_after_the_data() -> None:
    stream, carrier, tcp = make(send_window=1000)
    stream.tcp_data(b"x" * 2500)
    stream.tcp_eof()
    assert [t for t, _ in carrier.frames()] == [DATA]
    stream.grant(1000)
    assert [t for t, _ in carrier.frames()] == [DATA, DATA]
    stream.grant(1000)
    assert [t for t, _ in carrier.frames()] == [DATA, DATA, DATA, FIN]
    assert data_sent(carrier.frames()) == b"x" * 2500
    assert stream.state.state is State.HALF_CLOSED_UP
    assert "close" not in tcp.calls and "abort" not in tcp.calls


def test_no_credit_returned_while_tcp_is_write_paused() -> None:
    stream, carrier, tcp = make(recv_window=4000)  # batching threshold 1000
    stream.tcp_paused_writing()
    stream.deliver(memoryview(b"a" * 3000))
    assert bytes(tcp.written) == b"a" * 3000  # written, but the socket is backed up
    assert window_updates(carrier) == []
    stream.tcp_resumed_writing()
    assert window_updates(carrier) == [3000]
    # Below the threshold, credit is batched even after a resume.
    stream.tcp_paused_writing()
    stream.deliver(memoryview(b"b" * 400))
    stream.tcp_resumed_writing()
    assert window_updates(carrier) == [3000]
    stream.deliver(memoryview(b"c" * 599))
    assert window_updates(carrier) == [3000]
    stream.deliver(memoryview(b"d"))
    assert window_updates(carrier) == [3000, 1000]
    assert stream.recv_window.outstanding == 4000


def test_more_than_the_window_is_refused() -> None:
    stream, carrier, tcp = make(recv_window=4000)
    stream.tcp_paused_writing()  # nothing comes back while the socket is backed up
    stream.deliver(memoryview(b"a" * 4000))
    with pytest.raises(FlowControlError):
        stream.deliver(memoryview(b"!"))
    assert bytes(tcp.written) == b"a" * 4000  # the excess never reached the socket
    assert window_updates(carrier) == []


def test_carrier_aborts_a_stream_that_overruns_its_window() -> None:
    async def main() -> None:
        stats = CarrierStats()
        ended: list[TunnelStream] = []

        class Handler:  # only the end of a stream reaches the handler here
            def on_stream_end(self, carrier: Carrier, stream: TunnelStream) -> None:
                ended.append(stream)

        class Owner:  # no connection events in this test
            pass

        link = RelayLink(
            "ws://127.0.0.1:1/v1/client", "client", "token", None, 20, 1 << 20, 1, 1 << 20
        )
        carrier = Carrier(link, Handler(), Owner(), stats)  # type: ignore[arg-type]
        recorder = FakeCarrier()
        carrier.writer = recorder  # type: ignore[assignment]  # records every frame
        tcp = FakeTransport()
        stream = TunnelStream(carrier, SID, "sess", CLIENT_SIDE, State.CONNECT_REQUEST, 4000)
        stream.attach_tcp(tcp)  # type: ignore[arg-type]
        stream.opened(1000)
        carrier.streams[SID] = stream
        carrier.receive(memoryview(encode_frame(DATA, SID, b"z" * 4001)))
        frames = recorder.frames()
        assert [t for t, _ in frames] == [ERROR]
        assert "credit" in TunnelError.decode(frames[0][1]).error
        assert tcp.calls[-1] == "abort" and tcp.written == b""
        assert stream.state.closed and SID not in carrier.streams
        assert stats.protocol_errors["flow_control"] == 1
        assert ended == [stream]  # reported once, for the access log
        assert stats.ended_bytes_down == 0  # the refused 4,001 bytes never counted as delivered

    asyncio.run(main())


def test_fin_both_ways_closes_the_socket_gracefully() -> None:
    stream, carrier, tcp = make()
    stream.tcp_eof()
    assert [t for t, _ in carrier.frames()] == [FIN]
    assert stream.state.state is State.HALF_CLOSED_UP
    stream.deliver(memoryview(b"reply"))  # the other direction still flows
    stream.remote_fin()
    assert stream.state.state is State.CLOSED
    assert "close" in tcp.calls and "abort" not in tcp.calls
    assert carrier.forgotten and all(s is stream for s in carrier.forgotten)
    assert bytes(tcp.written) == b"reply"


def test_remote_fin_first_half_closes_then_closes() -> None:
    stream, carrier, tcp = make(side=AGENT_SIDE)
    stream.remote_fin()
    assert tcp.calls == ["write_eof"]
    assert stream.state.state is State.HALF_CLOSED_UP  # the agent received FIN_UP
    assert carrier.forgotten == []
    stream.tcp_data(b"more")  # the target may still answer
    stream.tcp_eof()
    assert [t for t, _ in carrier.frames()] == [DATA, FIN]
    assert tcp.calls == ["write_eof", "close"]
    assert carrier.forgotten == [stream]


def test_data_before_open_is_refused() -> None:
    stream, carrier, tcp = make(open_it=False)
    with pytest.raises(StreamError, match="not allowed"):
        stream.deliver(memoryview(b"early"))
    assert tcp.written == b"" and carrier.sent == []


def test_data_after_remote_fin_is_refused() -> None:
    stream, _carrier, tcp = make()
    stream.remote_fin()
    with pytest.raises(StreamError, match="not allowed"):
        stream.deliver(memoryview(b"late"))
    assert tcp.written == b""


def test_remote_tunnel_error_aborts_the_socket() -> None:
    stream, carrier, tcp = make()
    stream.tcp_data(b"x" * 5000)  # with data held back
    stream.remote_error("target reset")
    assert tcp.calls[-1] == "abort" and "close" not in tcp.calls
    assert stream.state.closed and stream.backlog is None
    assert carrier.forgotten == [stream]
    assert ERROR not in [t for t, _ in carrier.frames()]  # no echo back to the peer
    assert len(carrier.sent) == 1  # just the DATA sent before the error


def test_local_abort_tells_the_peer_once() -> None:
    stream, carrier, tcp = make()
    stream.abort("browser went away")
    stream.abort("again")
    frames = carrier.frames()
    assert [t for t, _ in frames] == [ERROR]
    assert TunnelError.decode(frames[0][1]).error == "browser went away"
    assert tcp.calls == ["abort"]
