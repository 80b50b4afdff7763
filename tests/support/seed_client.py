"""A small Client A written only from the seed document (not from fastrelay's code).

The seed document (/work/shared/seed/seed-in-english.md) describes its Client A:
a local HTTP proxy that, for a CONNECT to a filtered host, sends the relay

    {"type": "CONNECT", "sessionId": GUID, "method": "CONNECT",
     "url": "https://host:port", "headers": {...}}

as a WebSocket text message, waits for

    {"type": "CONNECT_RESPONSE", "sessionId": GUID, "statusCode": 200,
     "statusDescription": "Connection Established"}       (or statusCode + "error")

and then relays the tunnel's bytes with the seed's proposal 2: a text message
{"type": "TUNNEL_DATA", "sessionId": GUID, "length": N}, then one binary
message with the N bytes, both ways. An error while tunnelling arrives as
{"type": "TUNNEL_ERROR", "sessionId": GUID, "error": "..."}. The session ends
with an explicit close message, which the seed leaves unnamed; fastrelay calls
it {"type": "TUNNEL_CLOSE", "sessionId": GUID}.

It deliberately imports nothing from fastrelay: it is a second, independent
implementation of the dialect, with the stdlib's json and picows. Two uses:

* as a process, the local proxy a curl points at (every CONNECT goes to the
  relay; it prints a JSON ready line with its address, and on SIGTERM exits):

      python tests/support/seed_client.py --relay ws://127.0.0.1:8765 --listen 127.0.0.1:0
      (token in FASTRELAY_TOKEN)

* in-process, `SeedWire`: one WebSocket to /v1/seed for tests that send
  exact messages and read exactly what comes back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Callable
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

CHUNK = 64 * 1024  # bytes read from the browser per TUNNEL_DATA
HIGH_WATER = 1 << 20  # past this much unsent to a socket, stop reading the other side


class SeedWire(WSListener):
    """One seed WebSocket: text and binary messages in order, close code at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: WSTransport | None = None
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.close_code: int | None = None
        self.close_reason = ""
        self.on_message: Callable[[Any], None] | None = None  # instead of the queue

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            item: Any = json.loads(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.BINARY:
            item = frame.get_payload_as_bytes()
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())
            self.close_reason = (frame.get_close_message() or b"").decode()
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        else:
            return
        if self.on_message is not None:
            self.on_message(item)
        else:
            self.queue.put_nowait(item)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.on_message is not None:
            self.on_message(None)
        else:
            self.queue.put_nowait(None)

    def send_json(self, doc: Any) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, json.dumps(doc).encode())

    def send_raw(self, msg_type: WSMsgType, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.send(msg_type, payload)

    def send_data(self, session_id: str, data: bytes) -> None:
        self.send_json({"type": "TUNNEL_DATA", "sessionId": session_id, "length": len(data)})
        self.send_raw(WSMsgType.BINARY, data)

    async def next(self, timeout: float = 15.0) -> Any:
        return await asyncio.wait_for(self.queue.get(), timeout)


async def open_wire(url: str, token: str) -> SeedWire:
    """A WebSocket to `url` (ws://host:port/v1/seed) with the bearer token."""
    _, wire = await ws_connect(
        SeedWire, url, extra_headers={"Authorization": f"Bearer {token}"}, max_frame_size=16 << 20
    )
    return wire  # type: ignore[return-value]


class Tunnel(asyncio.Protocol):
    """One browser connection: its CONNECT head, then the tunnel's bytes."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.session_id = ""
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.open:
            view = memoryview(data)
            for offset in range(0, len(view), CHUNK):
                self.proxy.wire.send_data(self.session_id, bytes(view[offset : offset + CHUNK]))
            self.proxy.check_ws_buffer()
            return
        if self.session_id:
            return  # bytes before the 200: the seed's Client A waits for it
        self.head += data
        if b"\r\n\r\n" not in self.head:
            if len(self.head) > 16384:
                self._answer(431, "head too large")
            return
        line, *fields = self.head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "CONNECT":
            self._answer(405, "this Client A tunnels CONNECT only")
            return
        headers = {}
        for field in fields:
            name, _, value = field.partition(":")
            headers[name.strip()] = value.strip()
        self.session_id = str(uuid.uuid4())
        self.proxy.sessions[self.session_id] = self
        self.proxy.wire.send_json(
            {
                "type": "CONNECT",
                "sessionId": self.session_id,
                "method": "CONNECT",
                "url": f"https://{parts[1]}",
                "headers": headers,
            }
        )

    def eof_received(self) -> bool:
        if self.open:
            self.proxy.wire.send_json({"type": "TUNNEL_CLOSE", "sessionId": self.session_id})
        return True  # keep the write side open for the rest of the download

    def connection_lost(self, exc: Exception | None) -> None:
        if self.proxy.sessions.pop(self.session_id, None) is not None and self.open:
            self.proxy.wire.send_json(
                {"type": "TUNNEL_ERROR", "sessionId": self.session_id, "error": "browser closed"}
            )

    def pause_writing(self) -> None:
        self.proxy.pause_ws()

    def resume_writing(self) -> None:
        self.proxy.resume_ws()

    def _answer(self, status: int, text: str) -> None:
        assert self.transport is not None
        body = (text + "\n").encode()
        self.transport.write(
            f"HTTP/1.1 {status} {text}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        self.transport.close()

    # --- from the relay ---

    def response(self, doc: dict[str, Any]) -> None:
        assert self.transport is not None
        status = doc.get("statusCode")
        if status == 200:
            self.open = True
            self.transport.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        else:
            self.proxy.sessions.pop(self.session_id, None)
            self._answer(int(status or 502), str(doc.get("error", "Connection failed")))

    def data(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def closed(self) -> None:
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()

    def error(self, doc: dict[str, Any]) -> None:
        self.proxy.tunnel_errors += 1
        print(json.dumps({"event": "tunnel_error", **doc}), file=sys.stderr, flush=True)
        if self.transport is not None:
            self.transport.abort()


class Proxy:
    """The local proxy: a TCP listener and one WebSocket to the relay."""

    def __init__(self, wire: SeedWire) -> None:
        self.wire = wire
        self.sessions: dict[str, Tunnel] = {}
        self.expect: tuple[str, int] | None = None  # a TUNNEL_DATA header read, binary due
        self.tunnel_errors = 0
        self.ws_paused = 0
        self.tcp_paused = False
        wire.on_message = self.message
        self.done = asyncio.get_running_loop().create_future()

    def message(self, item: Any) -> None:
        if item is None:
            if not self.done.done():
                self.done.set_result(None)
            return
        if isinstance(item, bytes):
            if self.expect is None or self.expect[1] != len(item):
                raise RuntimeError("binary message does not match its TUNNEL_DATA header")
            tunnel = self.sessions.get(self.expect[0])
            self.expect = None
            if tunnel is not None:
                tunnel.data(item)
            return
        kind, session_id = item.get("type"), item.get("sessionId")
        if kind == "TUNNEL_DATA":
            self.expect = (session_id, item["length"])
            return
        tunnel = self.sessions.get(session_id)
        if tunnel is None:
            return
        if kind == "CONNECT_RESPONSE":
            tunnel.response(item)
        elif kind == "TUNNEL_ERROR":
            self.sessions.pop(session_id, None)
            tunnel.error(item)
        elif kind == "TUNNEL_CLOSE":
            tunnel.closed()

    # Backpressure both ways, as TCP gives it: a full browser socket stops
    # reading the WebSocket, a full WebSocket stops reading the browsers.
    def pause_ws(self) -> None:
        self.ws_paused += 1
        if self.ws_paused == 1 and self.wire.transport is not None:
            self.wire.transport.underlying_transport.pause_reading()

    def resume_ws(self) -> None:
        self.ws_paused -= 1
        if self.ws_paused == 0 and self.wire.transport is not None:
            self.wire.transport.underlying_transport.resume_reading()

    def check_ws_buffer(self) -> None:
        transport = self.wire.transport
        if transport is None or self.tcp_paused:
            return
        if transport.underlying_transport.get_write_buffer_size() > HIGH_WATER:
            self.tcp_paused = True
            for tunnel in self.sessions.values():
                if tunnel.transport is not None:
                    tunnel.transport.pause_reading()
            asyncio.get_running_loop().call_later(0.005, self._poll_ws_buffer)

    def _poll_ws_buffer(self) -> None:
        transport = self.wire.transport
        if transport is not None and transport.underlying_transport.get_write_buffer_size() > (
            HIGH_WATER // 4
        ):
            asyncio.get_running_loop().call_later(0.005, self._poll_ws_buffer)
            return
        self.tcp_paused = False
        for tunnel in self.sessions.values():
            if tunnel.transport is not None and not tunnel.transport.is_closing():
                tunnel.transport.resume_reading()


async def serve(relay: str, listen: str, token: str) -> None:
    wire = await open_wire(relay.rstrip("/") + "/v1/seed", token)
    proxy = Proxy(wire)
    host, _, port = listen.rpartition(":")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Tunnel(proxy), host, int(port))
    address = server.sockets[0].getsockname()
    print(json.dumps({"event": "ready", "listen": f"{address[0]}:{address[1]}"}), flush=True)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    await asyncio.wait([stop, proxy.done], return_when=asyncio.FIRST_COMPLETED)
    server.close()
    if wire.transport is not None:
        wire.transport.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--relay", required=True, help="ws://HOST:PORT of the relay")
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(serve(args.relay, args.listen, os.environ["FASTRELAY_TOKEN"]))


if __name__ == "__main__":
    main()
