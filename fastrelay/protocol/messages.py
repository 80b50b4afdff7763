"""Control messages: the JSON payloads of CONNECT, REQUEST, CONNECT_RESPONSE,
TUNNEL_ERROR, HELLO and GOAWAY frames.

Field names follow the seed document (`type`, `sessionId`, `method`, `url`,
`headers`, `statusCode`, `statusDescription`, `error`). `window` is fastrelay's
addition: the receive window, in bytes, that the sender of an open or of a
CONNECT_RESPONSE grants for data flowing towards it.

The messages every open makes (OpenStream, ConnectResponse, TunnelError) are
slotted dataclasses but not frozen ones: a frozen dataclass's `__init__` sets
each field through `object.__setattr__`, which more than doubles the cost of
making one (an OpenStream: ~18,800 CPU instructions against ~7,600), and an
open through the relay makes six of them across the three programs. Nothing
changes a message once it is made.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from fastrelay.protocol.errors import ControlMessageError
from fastrelay.protocol.frames import FRAME_NAMES, FrameType, encode_frame
from fastrelay.protocol.status import CONNECTION_ESTABLISHED, phrase

PROTOCOL_VERSION = 1
DEFAULT_WINDOW = 1024 * 1024
MAX_MEMBERS = 1024  # relay instances in one MEMBERS frame
# Agent pools: an agent joins one (the X-Fastrelay-Pool upgrade header), an
# open names one (`pool`), and the relay routes the open to that pool's agents.
DEFAULT_POOL = "default"
POOL_HEADER = "X-Fastrelay-Pool"
# What client_a can take beyond version 1's frames, announced in its upgrade request as
# comma-separated tokens (unknown ones are ignored): "rules" asks for RULES frames.
FEATURES_HEADER = "X-Fastrelay-Features"
FEATURE_RULES = "rules"
_POOL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def pool_error(name: str) -> str | None:
    """Why `name` is not a pool name (1-64 of [a-z0-9_-], starting with a
    letter or digit), or None when it is one."""
    if _POOL_NAME.fullmatch(name) is None:
        return (
            f"pool name {name[:80]!r} is not 1-64 characters of a-z, 0-9, '_' and '-' "
            "starting with a letter or digit"
        )
    return None


def status_description(status: int) -> str:
    """CONNECT_RESPONSE's statusDescription: the seed's phrase for 200, else the standard one."""
    return CONNECTION_ESTABLISHED if status == 200 else phrase(status)


def new_session_id() -> str:
    """A random (version 4) UUID in its canonical text form, exactly what str(uuid.uuid4())
    gives, made from the 16 random bytes directly: building the UUID object and its str
    cost ~3x as much, on every open at client_a."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _load(payload: bytes | memoryview, frame_type: FrameType) -> dict[str, Any]:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ControlMessageError(f"{frame_type.name} payload is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ControlMessageError(f"{frame_type.name} payload must be a JSON object")
    if doc.get("type") != FRAME_NAMES[frame_type]:
        raise ControlMessageError(
            f"{frame_type.name} frame carries a message of type {doc.get('type')!r}"
        )
    return doc


def _field(
    doc: dict[str, Any], name: str, kind: type, frame_type: FrameType, default: Any = ...
) -> Any:
    value = doc.get(name, default)
    if value is ...:
        raise ControlMessageError(f"{frame_type.name} is missing {name!r}")
    # `null` is a type error like any other, unless None is the field's default.
    if value is not default and not isinstance(value, kind):
        raise ControlMessageError(f"{frame_type.name} field {name!r} must be {kind.__name__}")
    if kind is int and isinstance(value, bool):
        raise ControlMessageError(f"{frame_type.name} field {name!r} must be int")
    return value


# For control messages defined next to their own codecs (fastrelay/protocol/rules.py's RULES).
load_control = _load
control_field = _field


_MAX_WINDOW = 2**31 - 1
# Members every open's messages use, as module names: on Python 3.11 `FrameType.X` in a
# function goes through EnumType.__getattr__'s slot hook (~850 instructions compiled).
_CONNECT_RESPONSE = FrameType.CONNECT_RESPONSE
_TUNNEL_ERROR = FrameType.TUNNEL_ERROR
# `decode`'s stand-in for an absent "headers": told apart from a message's own {} by identity.
_NO_HEADERS: dict[str, str] = {}


def _window(doc: dict[str, Any], frame_type: FrameType) -> int:
    window = _field(doc, "window", int, frame_type, DEFAULT_WINDOW)
    if not 1 <= window <= _MAX_WINDOW:
        raise ControlMessageError(f"{frame_type.name} window {window} is out of range")
    return int(window)


@dataclass(slots=True)
class OpenStream:
    """CONNECT (a tunnel to host:port) or REQUEST (one plain-HTTP request)."""

    kind: FrameType  # FrameType.CONNECT or FrameType.REQUEST
    session_id: str
    host: str
    port: int
    method: str = "CONNECT"
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    window: int = DEFAULT_WINDOW
    pool: str = DEFAULT_POOL  # the agent pool to route to; sent only when not the default

    def encode(self, stream_id: int, window: int | None = None) -> bytes:
        """The frame; `window` overrides the message's own (the session sets it)."""
        body: dict[str, Any] = {
            "type": FRAME_NAMES[self.kind],
            "sessionId": self.session_id,
            "method": self.method,
            "url": self.url or f"https://{format_authority(self.host, self.port)}",
            "headers": self.headers,
            "window": self.window if window is None else window,
        }
        if self.pool != DEFAULT_POOL:
            body["pool"] = self.pool
        return encode_frame(self.kind, stream_id, orjson.dumps(body))

    @classmethod
    def decode(cls, kind: FrameType, payload: bytes | memoryview) -> OpenStream:
        doc = _load(payload, kind)
        # Every open passes here at the relay and at the agent. The fast path
        # takes a message whose fields all have their types (by `type() is`: a
        # JSON document holds no subclasses, and an int test that way refuses
        # bools too); anything else goes the field-by-field way, which names
        # the field at fault. Both give the same message or the same error.
        url = doc.get("url")
        session_id = doc.get("sessionId")
        method = doc.get("method")
        headers = doc.get("headers", _NO_HEADERS)
        window = doc.get("window", DEFAULT_WINDOW)
        pool = doc.get("pool", DEFAULT_POOL)
        if (
            type(url) is not str
            or type(session_id) is not str
            or type(method) is not str
            or type(headers) is not dict
            or type(window) is not int
            or not 1 <= window <= _MAX_WINDOW
            or (pool is not DEFAULT_POOL and (type(pool) is not str or pool_error(pool)))
        ):
            return cls._decode_fields(kind, doc)
        for value in headers.values():  # the keys of a JSON object are strings
            if type(value) is not str:
                return cls._decode_fields(kind, doc)
        host, port = split_url(url, kind)
        if headers is _NO_HEADERS:
            headers = {}
        return cls(kind, session_id, host, port, method, url, headers, window, pool)

    @classmethod
    def _decode_fields(cls, kind: FrameType, doc: dict[str, Any]) -> OpenStream:
        """`decode` field by field: the first field at fault raises its own error."""
        url = _field(doc, "url", str, kind)
        headers = _field(doc, "headers", dict, kind, {})
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise ControlMessageError(f"{kind.name} headers must map strings to strings")
        host, port = split_url(url, kind)
        pool = DEFAULT_POOL
        if "pool" in doc:  # most opens name no pool: no look-up, no match for them
            pool = _field(doc, "pool", str, kind)
            why = pool_error(pool)
            if why is not None:
                raise ControlMessageError(f"{kind.name} {why}")
        return cls(
            kind=kind,
            session_id=_field(doc, "sessionId", str, kind),
            host=host,
            port=port,
            method=_field(doc, "method", str, kind),
            url=url,
            headers=headers,
            window=_window(doc, kind),
            pool=pool,
        )


@dataclass(slots=True)
class ConnectResponse:
    session_id: str
    status_code: int
    error: str | None = None
    window: int = DEFAULT_WINDOW
    # Machine-readable cause of a failure (refused, unreachable, dns, timeout,
    # policy, no_agent), so nobody has to match on the human `error` text.
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code == 200

    def encode(self, stream_id: int) -> bytes:
        body: dict[str, Any] = {
            "type": "CONNECT_RESPONSE",
            "sessionId": self.session_id,
            "statusCode": self.status_code,
            "statusDescription": status_description(self.status_code),
        }
        if self.error is not None:
            body["error"] = self.error
        if self.reason is not None:
            body["reason"] = self.reason
        if self.ok:
            body["window"] = self.window
        return encode_frame(_CONNECT_RESPONSE, stream_id, orjson.dumps(body))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> ConnectResponse:
        kind = _CONNECT_RESPONSE
        doc = _load(payload, kind)
        # As OpenStream.decode: typed fields the fast way, anything else field by field.
        session_id = doc.get("sessionId")
        status = doc.get("statusCode")
        error = doc.get("error")
        window = doc.get("window", DEFAULT_WINDOW)
        reason = doc.get("reason")
        if (
            type(session_id) is not str
            or type(status) is not int
            or not 100 <= status <= 599
            or (error is not None and type(error) is not str)
            or type(window) is not int
            or not 1 <= window <= _MAX_WINDOW
            or (reason is not None and type(reason) is not str)
        ):
            return cls._decode_fields(doc)
        return cls(session_id, status, error, window, reason)

    @classmethod
    def _decode_fields(cls, doc: dict[str, Any]) -> ConnectResponse:
        """`decode` field by field: the first field at fault raises its own error."""
        kind = _CONNECT_RESPONSE
        status = _field(doc, "statusCode", int, kind)
        if not 100 <= status <= 599:
            raise ControlMessageError(f"CONNECT_RESPONSE statusCode {status} is not an HTTP status")
        return cls(
            session_id=_field(doc, "sessionId", str, kind),
            status_code=status,
            error=_field(doc, "error", str, kind, None),
            window=_window(doc, kind),
            reason=_field(doc, "reason", str, kind, None),
        )


@dataclass(slots=True)
class TunnelError:
    session_id: str
    error: str

    def encode(self, stream_id: int) -> bytes:
        body = {"type": "TUNNEL_ERROR", "sessionId": self.session_id, "error": self.error}
        return encode_frame(_TUNNEL_ERROR, stream_id, orjson.dumps(body))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> TunnelError:
        kind = _TUNNEL_ERROR
        doc = _load(payload, kind)
        return cls(
            session_id=_field(doc, "sessionId", str, kind, ""),
            error=_field(doc, "error", str, kind),
        )


@dataclass(frozen=True, slots=True)
class Hello:
    """The relay's first frame on every WebSocket it accepts.

    client_a allocates its stream ids in [stream_id_base, stream_id_base +
    stream_id_count), a range unique on this relay, so the relay forwards
    frames between client_a and agent without rewriting stream ids.
    """

    instance_id: str
    version: int = PROTOCOL_VERSION
    stream_id_base: int = 0
    stream_id_count: int = 0
    # What the relay holds for this connection at most, in bytes, and how many
    # streams it carries at once (0: not announced). The receiver keeps the
    # credit it grants on the connection within the budget (flow.CreditPool).
    buffer_budget: int = 0
    max_streams: int = 0
    # The largest WebSocket message the relay accepts, and so forwards (0: not
    # announced). The receiver's own limit must be at least this.
    max_frame_size: int = 0
    # To an agent: the pool the relay put it in, from its X-Fastrelay-Pool
    # header ("": not announced, a relay without pools). An agent of another
    # pool than "default" hangs up on a relay that does not confirm its pool.
    pool: str = ""
    # The relay answers PROBE frames, stamped with its clock (False: not
    # announced, a relay that would close the connection on one).
    probe: bool = False

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "type": "HELLO",
            "version": self.version,
            "instanceId": self.instance_id,
            "streamIdBase": self.stream_id_base,
            "streamIdCount": self.stream_id_count,
        }
        if self.buffer_budget:
            body["bufferBudget"] = self.buffer_budget
        if self.max_streams:
            body["maxStreams"] = self.max_streams
        if self.max_frame_size:
            body["maxFrameSize"] = self.max_frame_size
        if self.pool:
            body["pool"] = self.pool
        if self.probe:
            body["probe"] = True
        return encode_frame(FrameType.HELLO, 0, orjson.dumps(body))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Hello:
        kind = FrameType.HELLO
        doc = _load(payload, kind)
        hello = cls(
            instance_id=_field(doc, "instanceId", str, kind),
            version=_field(doc, "version", int, kind),
            stream_id_base=_field(doc, "streamIdBase", int, kind, 0),
            stream_id_count=_field(doc, "streamIdCount", int, kind, 0),
            buffer_budget=_field(doc, "bufferBudget", int, kind, 0),
            max_streams=_field(doc, "maxStreams", int, kind, 0),
            max_frame_size=_field(doc, "maxFrameSize", int, kind, 0),
            pool=_field(doc, "pool", str, kind, ""),
            probe=_field(doc, "probe", bool, kind, False),
        )
        if hello.version != PROTOCOL_VERSION:
            raise ControlMessageError(
                f"protocol version {hello.version} is not supported (this side speaks "
                f"{PROTOCOL_VERSION})"
            )
        base, count = hello.stream_id_base, hello.stream_id_count
        if base < 0 or count < 0 or base + count > 2**32:
            raise ControlMessageError("HELLO stream id range is outside u32")
        if base == 0 and count > 0:
            raise ControlMessageError("HELLO stream id range includes 0, the connection's id")
        if not all(0 <= n < 2**40 for n in (hello.buffer_budget, hello.max_streams)) or not (
            0 <= hello.max_frame_size <= 2**31
        ):
            raise ControlMessageError(
                "HELLO bufferBudget, maxStreams or maxFrameSize is out of range"
            )
        if hello.pool:
            why = pool_error(hello.pool)
            if why is not None:
                raise ControlMessageError(f"HELLO {why}")
        return hello


@dataclass(frozen=True, slots=True)
class GoAway:
    error: str = "shutting down"

    def encode(self) -> bytes:
        return encode_frame(
            FrameType.GOAWAY, 0, orjson.dumps({"type": "GOAWAY", "error": self.error})
        )

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> GoAway:
        doc = _load(payload, FrameType.GOAWAY)
        return cls(error=_field(doc, "error", str, FrameType.GOAWAY, ""))


@dataclass(frozen=True)
class Members:
    """The relay instances alive in a deployment, sent by a relay to its
    agents after HELLO and again whenever the set changes. An agent keeps one
    connection to each (the mesh), so a client_a that lands on any relay finds
    an agent there."""

    instances: tuple[str, ...]

    def encode(self) -> bytes:
        body = {"type": "MEMBERS", "instances": sorted(self.instances)}
        return encode_frame(FrameType.MEMBERS, 0, orjson.dumps(body))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Members:
        kind = FrameType.MEMBERS
        doc = _load(payload, kind)
        instances = _field(doc, "instances", list, kind)
        if not instances or not all(isinstance(i, str) and i for i in instances):
            raise ControlMessageError("MEMBERS instances must be a non-empty list of ids")
        if len(instances) > MAX_MEMBERS:
            raise ControlMessageError(
                f"MEMBERS lists {len(instances)} instances, over {MAX_MEMBERS}"
            )
        return cls(tuple(sorted(set(instances))))


def format_authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_authority(authority: str, default_port: int | None = None) -> tuple[str, int]:
    """'host:port', '[v6]:port' or (with a default port) a bare host -> (host, port)."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"unterminated IPv6 literal in {authority!r}")
        host, rest = authority[1:end], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"junk after IPv6 literal in {authority!r}")
        port_text = rest[1:] if rest else ""
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            host, port_text = authority, ""
        elif ":" in host:
            raise ValueError(f"IPv6 address must be in brackets: {authority!r}")
    if not port_text:
        if default_port is None:
            raise ValueError(f"missing port in {authority!r}")
        port = default_port
    else:
        if not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(f"bad port in {authority!r}")
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError(f"bad port in {authority!r}")
    if not host:
        raise ValueError(f"empty host in {authority!r}")
    return host, port


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Compiled once: re.split with a pattern string looks it up in re's cache on every open
# (~3 µs of split_url's ~6 in the relay and the agent).
_AUTHORITY_END = re.compile(r"[/?#]")


def split_url(url: str, kind: FrameType = FrameType.CONNECT) -> tuple[str, int]:
    """The (host, port) of 'scheme://authority[/path]'."""
    scheme, sep, rest = url.partition("://")
    default_port = _DEFAULT_PORTS.get(scheme) if sep else None
    if default_port is None:  # no scheme, another one, or one in capitals
        if not sep or scheme.lower() not in _DEFAULT_PORTS:
            raise ControlMessageError(f"{kind.name} url {url!r} is not http(s)://host[:port]")
        default_port = _DEFAULT_PORTS[scheme.lower()]
    # A CONNECT's url is scheme://host:port: the regular expression and the
    # userinfo cut run only for a url with more than that.
    if "/" in rest or "?" in rest or "#" in rest:
        rest = _AUTHORITY_END.split(rest, 1)[0]
    if "@" in rest:
        rest = rest.rpartition("@")[2]
    try:
        return split_authority(rest, default_port)
    except ValueError as exc:
        raise ControlMessageError(f"{kind.name} url: {exc}") from None
