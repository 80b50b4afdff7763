"""Write hand-made seed inputs into fuzz/corpus/<harness>/ (valid inputs the fuzzer mutates
from; random bytes rarely become JSON, TOML or an HTTP head). Idempotent: a seed's file name
is its SHA-1, as libFuzzer names corpus files.

    python -m fuzz.seeds
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from fastrelay.protocol.frames import FrameType, encode_frame
from fastrelay.protocol.messages import (
    ConnectResponse,
    GoAway,
    Hello,
    Members,
    OpenStream,
    TunnelError,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _payload(frame: bytes) -> bytes:
    return frame[10:]  # the mux header is 10 bytes


def seeds() -> dict[str, list[bytes]]:
    opens = [
        OpenStream(FrameType.CONNECT, "s1", "", 0, "CONNECT", "https://a.example:443", {}, 65536),
        OpenStream(
            FrameType.REQUEST, "s2", "", 0, "GET", "http://[::1]:8080/x?q", {"A": "b"}, 1 << 20
        ),
    ]
    messages = [
        (0, _payload(opens[0].encode(1))),
        (1, _payload(opens[1].encode(3))),
        (2, _payload(ConnectResponse("s1", 200, "OK", 65536, None).encode(1))),
        (2, _payload(ConnectResponse("s1", 502, "Bad Gateway", 65536, "refused").encode(1))),
        (3, _payload(TunnelError("s1", "reset").encode(1))),
        (4, _payload(Hello("relay-a", 1, 2, 1000).encode())),
        (5, _payload(GoAway("draining").encode())),
        (6, _payload(Members(("relay-a", "relay-b")).encode())),
    ]
    frames = [
        encode_frame(FrameType.TUNNEL_DATA, 1, b"hello"),
        encode_frame(FrameType.FIN, 3, b""),
        encode_frame(FrameType.WINDOW_UPDATE, 5, (65536).to_bytes(4, "big")),
        opens[0].encode(1) + encode_frame(FrameType.TUNNEL_DATA, 1, b"x" * 20),
        Hello("r", 1, 2, 10).encode() + GoAway("bye").encode(),
    ]
    requests = [
        b"GET http://a.example/p?q=1 HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n\r\n",
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\nearly",
        b"\r\nPOST http://[::1]:8080/ HTTP/1.0\r\nContent-Length: 2\r\n"
        b"Connection: x-a, close\r\nX-A: 1\r\nProxy-Authorization: b\r\n\r\nhi",
        b"\x90GET http://127.1/ HTTP/1.1\r\nHost: 127.1\r\n\r\n",
    ]
    responses = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi",
        b"\n\nHTTP/1.0 404 Nope\nX: 1\n\nbody",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nKeep-Alive: 5\r\n\r\n",
        b"\x90HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    ]
    bodies = [
        b"\x00" + b"5\r\nhello\r\n0\r\n\r\n",
        b"\x00" + b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"\x01" + b"hello" + b"tail",
        b"\x03" + b"1\r\na\r\n0\r\n\r\n",
        b"\x00" + b"ffffffffffffffffff\r\n",
    ]
    hostnames = [
        b"a.example",
        b"A.Example.",
        b"xn--p1ai",
        "bücher.de".encode(),
        "\uff52t-loop.test".encode(),
        "a\u3002b".encode(),
        b"127.1",
        b"0x7f000001",
        b"0177.0.0.1",
        b"[::1]",
        b"fe80::1%eth0",
        b"_dmarc.example",
        b"1.2.3.256",
    ]
    socks = [
        b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x02\x01\xbbtunnel bytes",
        b"\x05\x02\x02\x00\x05\x01\x00\x03\x0elisted.example\x20\xfb",
        b"\x05\x01\x00\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x50",
        b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x02\x01\xbb",
        b"\x05\x01\x00\x05\x01\x00\x09",
        b"\x05\x01\x02",
        b"\x05\x00",
    ]
    rules = [
        b"# comment\nexact.example.com\n*.sub.example.org  # subdomains\n.domain.net\n"
        b"203.0.113.0/24\n10.9.8.7\n2001:db8::/32\n::ffff:10.0.0.0/104\n",
        b"\xef\xbb\xbfa.example\r\n",
        b".corp.example @corp\n*.shop.example fallback=direct\n[pool lab]\n.lab.example\n"
        b"10.0.0.0/8 @edge fallback=closed\n[pool default]\nz.example\n",
    ]
    policy = [
        b"10.20.0.0/16\n.intranet.example.com:443\n-10.20.99.0/24",
        b"[2001:db8::/32]:443\n-*.evil.example\n127.0.0.0/8:8080",
        b"example.com\n-::1:80",
    ]
    configs = []
    for index, program in enumerate(["client", "agent", "relay"]):
        example = (ROOT / "deploy" / "systemd" / f"{program}.toml.example").read_bytes()
        # The example's files do not exist here: the fuzzer would stop at the first one.
        example = re.sub(rb'(?m)^(\w*(?:file|rules|cert|key)\w*) = ".*"\n', b"", example)
        configs.append(bytes([index | 4]) + example)
    configs.append(b"\x00" + b'listen = "[::1]:8080"\nwindow = 65536\nlog-level = "debug"\n')
    seed_messages = [
        (1, b'{"type":"CONNECT","sessionId":"guid-string","method":"CONNECT",'
         b'"url":"https://example.com:443","headers":{"Host":"example.com:443"}}'),
        (1, b'{"type":"TUNNEL_DATA","sessionId":"guid-string","length":5}'),
        (2, b"hello"),
        (1, b'{"type":"TUNNEL_CLOSE","sessionId":"guid-string"}'),
        (1, b'{"type":"TUNNEL_ERROR","sessionId":"guid-string","error":"Connection lost"}'),
    ]  # fmt: skip
    seed = [
        b"".join(bytes([op]) + len(p).to_bytes(2, "big") + p for op, p in seed_messages),
        seed_messages[0][1],
        b"\x05\x00\x0a" + seed_messages[1][1][:10] + b"\x00\x00\x05" + seed_messages[1][1][10:],
    ]
    return {
        "seed": seed,
        "frames": frames,
        "messages": [bytes([kind]) + payload for kind, payload in messages],
        "request_head": requests,
        "response_head": responses,
        "chunked_body": bodies,
        "hostname": hostnames,
        "socks": socks,
        "rules": rules,
        "policy": policy,
        "config": configs,
    }


def main() -> None:
    for name, inputs in seeds().items():
        corpus = HERE / "corpus" / name
        corpus.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)


if __name__ == "__main__":
    main()
