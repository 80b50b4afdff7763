"""SOCKS5 (RFC 1928) as client_a speaks it on its proxy port: bytes in, answers out.

client_a reads one byte to tell the protocols apart: 0x05 starts a SOCKS5 greeting,
anything else an HTTP request. `SocksParser` then takes the bytes as they arrive, split
anywhere, and gives back what to send and, once complete, the CONNECT request:

* the greeting (VER 5, NMETHODS, METHODS): NO AUTHENTICATION REQUIRED (0x00) must be
  offered; the answer is `05 00` (`METHOD_SELECTED`), else `05 FF` and a close;
* the request (VER 5, CMD, RSV 0, ATYP, DST.ADDR, DST.PORT): only CONNECT (0x01); BIND
  and UDP ASSOCIATE are answered 0x07 (command not supported); IPv4 (0x01), a domain
  name (0x03) and IPv6 (0x04) addresses are accepted, any other type gets 0x08.

Bytes after the request (a client that sends its first tunnel bytes without waiting for
the reply) are kept in `rest`, never lost. A malformed greeting or request raises
`SocksError` with the precise reason and the bytes to answer before closing; nothing else
is ever raised. The parser holds at most one greeting (257 bytes) and one request
(262 bytes) plus what arrived with them; a client that stops halfway is ended by
client_a's --header-timeout.

No reply here names a bound address: client_a answers success with 0.0.0.0:0
(`SUCCEEDED`), on both routes, and failures likewise (`reply`).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

from fastrelay.protocol.status import SocksReply

VERSION = 0x05
NO_AUTH = 0x00
NO_ACCEPTABLE_METHODS = 0xFF
CONNECT, BIND, UDP_ASSOCIATE = 0x01, 0x02, 0x03
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04

METHOD_SELECTED = bytes((VERSION, NO_AUTH))
METHOD_REFUSED = bytes((VERSION, NO_ACCEPTABLE_METHODS))
_COMMANDS = {BIND: "BIND", UDP_ASSOCIATE: "UDP ASSOCIATE"}
# A domain name as client_a's HTTP parser takes a host (letters, digits, '_', '.', '-').
_DOMAIN = re.compile(r"[A-Za-z0-9_.-]+")


def reply(code: SocksReply) -> bytes:
    """A reply to the request: VER, REP, RSV, and the bound address 0.0.0.0:0."""
    return bytes((VERSION, code, 0x00, ATYP_IPV4, 0, 0, 0, 0, 0, 0))


SUCCEEDED = reply(SocksReply.SUCCEEDED)


class SocksError(Exception):
    """A greeting or request client_a refuses: `answer` goes to the client, then a close
    (with the method selection in front when the greeting came in the same bytes).
    `code` is the reply code (None for a greeting refused with `05 FF`)."""

    def __init__(self, code: SocksReply | None, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.answer = METHOD_REFUSED if code is None else reply(code)


@dataclass(frozen=True, slots=True)
class SocksRequest:
    """A complete CONNECT request. `host` is a dotted quad, an IPv6 address without
    brackets, or the domain name as sent."""

    host: str
    port: int
    atyp: int


class Stage(enum.Enum):
    GREETING = "greeting"
    REQUEST = "request"
    DONE = "done"


class SocksParser:
    __slots__ = ("buf", "rest", "stage")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.stage = Stage.GREETING
        self.rest = b""  # bytes after the request: the first tunnel bytes

    @property
    def greeted(self) -> bool:
        """The greeting was answered: a failure now is a reply, not `05 FF`."""
        return self.stage is not Stage.GREETING

    def feed(self, data: bytes) -> tuple[bytes, SocksRequest | None]:
        """Take the next bytes; return what to send now (the method selection, once)
        and the request once it is complete. Raises SocksError."""
        if self.stage is Stage.DONE:
            self.rest += data
            return b"", None
        self.buf += data
        answer = b""
        if self.stage is Stage.GREETING:
            if not self._greeting():
                return b"", None
            answer = METHOD_SELECTED
            self.stage = Stage.REQUEST
        try:
            request = self._request()
        except SocksError as exc:
            exc.answer = answer + exc.answer  # the method selection still goes first
            raise
        if request is not None:
            self.stage = Stage.DONE
        return answer, request

    def _greeting(self) -> bool:
        buf = self.buf
        if buf[:1] and buf[0] != VERSION:
            raise SocksError(None, f"SOCKS version {buf[0]:#04x} in the greeting, expected 0x05")
        if len(buf) < 2:
            return False
        count = buf[1]
        if count == 0:
            raise SocksError(None, "the greeting offers no authentication method")
        if len(buf) < 2 + count:
            return False
        methods = bytes(buf[2 : 2 + count])
        if NO_AUTH not in methods:
            offered = ", ".join(f"{m:#04x}" for m in methods)
            raise SocksError(
                None,
                f"the greeting offers methods {offered}; client_a accepts only "
                "0x00 (no authentication)",
            )
        del buf[: 2 + count]
        return True

    def _request(self) -> SocksRequest | None:
        buf = self.buf
        if buf[:1] and buf[0] != VERSION:
            raise SocksError(
                SocksReply.GENERAL_FAILURE, f"SOCKS version {buf[0]:#04x} in the request, not 0x05"
            )
        if len(buf) < 4:
            return None
        atyp = buf[3]
        if atyp == ATYP_IPV4:
            end = 4 + 4
        elif atyp == ATYP_IPV6:
            end = 4 + 16
        elif atyp == ATYP_DOMAIN:
            if len(buf) < 5:
                return None
            end = 5 + buf[4]
        else:
            raise SocksError(
                SocksReply.ADDRESS_TYPE_NOT_SUPPORTED,
                f"address type {atyp:#04x} is not supported: use 0x01 (IPv4), "
                "0x03 (domain name) or 0x04 (IPv6)",
            )
        if len(buf) < end + 2:
            return None
        command = buf[1]
        if command != CONNECT:
            name = _COMMANDS.get(command, f"command {command:#04x}")
            raise SocksError(
                SocksReply.COMMAND_NOT_SUPPORTED, f"{name} is not supported: only CONNECT (0x01)"
            )
        if buf[2] != 0:
            raise SocksError(
                SocksReply.GENERAL_FAILURE, f"reserved byte {buf[2]:#04x} in the request, not 0x00"
            )
        host = _host(atyp, bytes(buf[4:end]))
        port = int.from_bytes(buf[end : end + 2], "big")
        if port == 0:
            raise SocksError(SocksReply.GENERAL_FAILURE, f"port 0 for {host}")
        self.rest = bytes(buf[end + 2 :])
        del buf[:]
        return SocksRequest(host, port, atyp)


def _host(atyp: int, raw: bytes) -> str:
    if atyp == ATYP_IPV4:
        return str(ipaddress.IPv4Address(raw))
    if atyp == ATYP_IPV6:
        return ipaddress.IPv6Address(raw).compressed
    name = raw[1:]
    if not name:
        raise SocksError(SocksReply.GENERAL_FAILURE, "empty domain name")
    text = name.decode("latin-1")
    if _DOMAIN.fullmatch(text):
        return text
    try:  # some clients send an IPv6 literal as a name
        return ipaddress.IPv6Address(text.strip("[]")).compressed
    except ValueError:
        raise SocksError(SocksReply.GENERAL_FAILURE, f"invalid domain name {text!r}") from None
