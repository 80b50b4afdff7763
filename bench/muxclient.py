"""A minimal client_a stand-in that speaks the mux protocol to the relay
directly, for driving the relay harder than TCP coalescing at client_a allows."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from fastrelay.protocol.frames import FrameType, decode_window_increment, iter_frames
from fastrelay.protocol.messages import Hello, OpenStream


class MuxClient(WSListener):
    def __init__(self) -> None:
        super().__init__()
        loop = asyncio.get_running_loop()
        self.hello_future: asyncio.Future[Hello] = loop.create_future()
        self.responses: dict[int, asyncio.Future[dict]] = {}
        self.credit = 0
        self.credit_changed = asyncio.Event()
        self.ended: dict[int, str] = {}  # streams the relay or the agent ended: how
        self.writable = asyncio.Event()
        self.writable.set()
        self.transport: WSTransport | None = None
        self.hello: Hello

    @classmethod
    async def connect(
        cls,
        url: str,
        token: str,
        factory: Callable[[], MuxClient] | None = None,
        socket_factory: Callable[..., socket.socket] | None = None,
    ) -> MuxClient:
        """Upgrade, then wait for HELLO. `factory` builds the listener (a
        subclass with arguments); `socket_factory` goes to picows' ws_connect."""
        transport, client = await ws_connect(
            factory or cls,
            url,
            extra_headers={"Authorization": f"Bearer {token}"},
            socket_factory=socket_factory,
        )
        client.transport = transport
        client.hello = await asyncio.wait_for(client.hello_future, 10)
        return client

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.BINARY:
            return
        data = frame.get_payload_as_memoryview()
        for ftype, _flags, sid, off, length in iter_frames(data):
            payload = data[off : off + length]
            if ftype == FrameType.HELLO:
                self.hello_future.set_result(Hello.decode(payload))
            elif ftype == FrameType.CONNECT_RESPONSE and sid in self.responses:
                self.responses.pop(sid).set_result(orjson.loads(payload))
            elif ftype == FrameType.WINDOW_UPDATE:
                self.credit += decode_window_increment(payload)
                self.credit_changed.set()
            elif ftype in (FrameType.TUNNEL_ERROR, FrameType.FIN):
                self.ended[sid] = f"{FrameType(ftype).name} {bytes(payload)[:200]!r}"
                self.credit_changed.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    async def open(self, sid: int, host: str, port: int) -> int:
        """Open a CONNECT stream; the upstream credit the agent granted."""
        fut = asyncio.get_running_loop().create_future()
        self.responses[sid] = fut
        self.send(OpenStream(FrameType.CONNECT, f"bench-{sid}", host, port).encode(sid))
        response = await asyncio.wait_for(fut, 10)
        if response["statusCode"] != 200:
            raise ConnectionError(f"open failed: {response}")
        return int(response.get("window", 1 << 20))

    async def wait_for_room(self, need: int) -> None:
        if not self.writable.is_set():
            await asyncio.wait_for(self.writable.wait(), 10)
        if self.credit < need:
            self.credit_changed.clear()
            try:
                await asyncio.wait_for(self.credit_changed.wait(), 10)
            except TimeoutError:
                raise TimeoutError(
                    f"no WINDOW_UPDATE in 10 s with {self.credit} bytes of credit ({need} wanted)"
                ) from None
        if self.ended:
            raise ConnectionError(f"streams ended: {self.ended}")

    def send(self, message: bytes) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.BINARY, message)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.disconnect()
