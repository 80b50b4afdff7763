"""The mux frame codec: every byte fastrelay puts inside a WebSocket message.

A WebSocket binary message carries one or more mux frames back to back:

    +--------+--------+------------------+------------------+----------------+
    | type   | flags  | stream id        | payload length   | payload ...    |
    | u8     | u8     | u32, big-endian  | u32, big-endian  | length bytes   |
    +--------+--------+------------------+------------------+----------------+

The header is 10 bytes. Stream id 0 is the connection itself (HELLO, GOAWAY,
MEMBERS, RULES, PROBE);
every other frame names a stream. `docs/PROTOCOL.md` has the same layout with
byte-exact test vectors, which `tests/protocol/test_vectors.py` checks.

Decoding works on memoryviews and never slices a payload into new bytes: the
relay forwards payload views straight out of picows' read buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from enum import IntEnum

from fastrelay.protocol.errors import FrameError

try:
    import cython  # type: ignore[import-untyped]  # compiled: a constant; else the shadow module
except ImportError:  # installed without Cython: interpreted
    _COMPILED = False
else:
    _COMPILED = cython.compiled

HEADER = struct.Struct("!BBII")
HEADER_SIZE = HEADER.size  # 10
# A payload length above this is malformed whatever the WebSocket limit is.
MAX_PAYLOAD = 16 * 1024 * 1024
WINDOW_UPDATE_BODY = struct.Struct("!I")
# PROBE: an endpoint's 8 bytes, which the relay echoes with its clock (u64 us).
PROBE_BODY = struct.Struct("!Q")
PROBE_ANSWER_BODY = struct.Struct("!QQ")


class FrameType(IntEnum):
    CONNECT = 0x01  # open a tunnel stream (JSON); the seed's CONNECT
    REQUEST = 0x02  # open a stream for one plain-HTTP request (JSON)
    CONNECT_RESPONSE = 0x03  # the open result, with statusCode (JSON)
    TUNNEL_DATA = 0x04  # stream bytes, raw
    FIN = 0x05  # half-close: the sender sends no more data on this stream
    TUNNEL_ERROR = 0x06  # abort the stream in both directions (JSON, with error)
    WINDOW_UPDATE = 0x07  # return u32 bytes of credit for the sender's direction
    HELLO = 0x08  # session start: version, instance id (JSON), stream id 0
    GOAWAY = 0x09  # the sender opens and accepts no new streams (JSON), stream id 0
    MEMBERS = 0x0A  # the relay's live instance set, for an agent's mesh (JSON), stream id 0
    RULES = 0x0B  # rules the relay pushes to a client_a that asked for them (JSON), stream id 0
    PROBE = 0x0C  # a timed probe (8 bytes) and the relay's stamped answer (16), stream id 0


# The frame types as plain ints, for the code that compares a header's type:
# the walker here, the switch, the session, the seed dialect. `FrameType.X` in a
# function goes through EnumType.__getattr__'s slot hook on Python 3.11 (~850
# instructions compiled); these are module globals, and C ints in a compiled
# module whose .pxd declares them (switch.pxd, session.pxd).
T_CONNECT = int(FrameType.CONNECT)
T_REQUEST = int(FrameType.REQUEST)
T_CONNECT_RESPONSE = int(FrameType.CONNECT_RESPONSE)
T_TUNNEL_DATA = int(FrameType.TUNNEL_DATA)
T_FIN = int(FrameType.FIN)
T_TUNNEL_ERROR = int(FrameType.TUNNEL_ERROR)
T_WINDOW_UPDATE = int(FrameType.WINDOW_UPDATE)
T_HELLO = int(FrameType.HELLO)
T_GOAWAY = int(FrameType.GOAWAY)
T_MEMBERS = int(FrameType.MEMBERS)
T_RULES = int(FrameType.RULES)
T_PROBE = int(FrameType.PROBE)

# TUNNEL_DATA flag: the sender has more to send than its credit allowed; this
# frame (possibly empty) used the last of it. The receiver may grow the window.
FLAG_BLOCKED = 0x01

# Frames that belong to the connection rather than to a stream.
CONNECTION_FRAMES = frozenset(
    {FrameType.HELLO, FrameType.GOAWAY, FrameType.MEMBERS, FrameType.RULES, FrameType.PROBE}
)
OPEN_FRAMES = frozenset({FrameType.CONNECT, FrameType.REQUEST})
# A frame type's member and its name by value (an int or a member): enum.py's
# FrameType(value) and `.name` run Python code (1-2 us each), and every open used them.
FRAME_TYPES: dict[int, FrameType] = {int(t): t for t in FrameType}
FRAME_NAMES: dict[int, str] = {int(t): t.name for t in FrameType}
_KNOWN_TYPES = frozenset(int(t) for t in FrameType)
_CONNECTION_TYPES = frozenset(int(t) for t in CONNECTION_FRAMES)
# The walker's own copies, C ints when compiled (frames.pxd): a module's C
# globals are not importable, and the others import the T_ names above.
_WINDOW_UPDATE = T_WINDOW_UPDATE
_FIN = T_FIN
_PROBE = T_PROBE
_unpack_header = HEADER.unpack_from
_pack_header_into = HEADER.pack_into


def encode_header(frame_type: int, stream_id: int, length: int, flags: int = 0) -> bytes:
    return HEADER.pack(frame_type, flags, stream_id, length)


def encode_frame(frame_type: int, stream_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return HEADER.pack(frame_type, flags, stream_id, len(payload)) + payload


def encode_window_update(stream_id: int, increment: int) -> bytes:
    return HEADER.pack(_WINDOW_UPDATE, 0, stream_id, 4) + WINDOW_UPDATE_BODY.pack(increment)


def read_header(message: memoryview | bytes | bytearray, offset: int) -> tuple[int, int, int, int]:
    """The header at `offset`: (type, flags, stream id, payload length), as
    `HEADER.unpack_from` gives it, errors included.

    Compiled, the header is read in place (`_header_in_place`, frames.pxd):
    no call into struct, no tuple and no int objects for the caller, which
    reads the ten bytes of every frame of every message through here.
    """
    if _COMPILED:
        header = _header_in_place(message, offset)  # type: ignore[name-defined]  # noqa: F821
        if header[0] >= 0:
            return header  # type: ignore[no-any-return]
    return _unpack_header(message, offset)  # outside the buffer: struct's own error


def write_header(
    buf: bytearray, at: int, frame_type: int, flags: int, stream_id: int, length: int
) -> None:
    """Write a header into `buf` at `at`, as `HEADER.pack_into` does, errors included.

    Compiled, the ten bytes are stored in place (`_header_into`, frames.pxd)
    when the arguments are in range; anything else goes to struct, which
    raises what it raises.
    """
    if _COMPILED and _header_into(buf, at, frame_type, flags, stream_id, length):  # type: ignore[name-defined]  # noqa: F821
        return
    _pack_header_into(buf, at, frame_type, flags, stream_id, length)


def check_header(frame_type: int, stream_id: int, length: int, available: int) -> None:
    """Raise FrameError unless a decoded header is well formed.

    `available` is how many payload bytes the message still holds.
    """
    if frame_type not in _KNOWN_TYPES:
        raise FrameError(f"unknown frame type 0x{frame_type:02x}")
    if length > available:
        raise FrameError(
            f"truncated frame: header says {length} payload bytes, message holds {available}"
        )
    if length > MAX_PAYLOAD:
        raise FrameError(f"payload length {length} exceeds {MAX_PAYLOAD}")
    if (frame_type in _CONNECTION_TYPES) != (stream_id == 0):
        raise FrameError(
            f"{FrameType(frame_type).name} frame with stream id {stream_id}"
            " (stream id 0 is for HELLO, GOAWAY, MEMBERS, RULES and PROBE only)"
        )
    if frame_type == _WINDOW_UPDATE and length != 4:
        raise FrameError(f"WINDOW_UPDATE payload must be 4 bytes, got {length}")
    if frame_type == _FIN and length != 0:
        raise FrameError(f"FIN payload must be empty, got {length} bytes")
    if frame_type == _PROBE and length != 8 and length != 16:
        raise FrameError(f"PROBE payload must be 8 or 16 bytes, got {length}")


def read_frame(message: memoryview | bytes, offset: int) -> tuple[int, int, int, int, int]:
    """The frame at `offset`: (type, flags, stream id, payload start, end).

    The one frame walker: the codec (`iter_frames`), the endpoints and the
    relay's switch all step through messages with it. Raises FrameError
    unless the frame is well formed.
    """
    left = len(message) - offset
    if left < HEADER_SIZE:
        raise FrameError(f"truncated header: {left} bytes left, need {HEADER_SIZE}")
    frame_type, flags, stream_id, length = read_header(message, offset)
    start = offset + HEADER_SIZE
    check_header(frame_type, stream_id, length, left - HEADER_SIZE)
    return frame_type, flags, stream_id, start, start + length


def iter_frames(message: memoryview | bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (type, flags, stream id, payload offset, payload length) per frame.

    Raises FrameError on the first malformed frame; frames before it were
    already yielded, which is what a receiver that acts frame by frame sees.
    """
    total = len(message)
    offset = 0
    while offset < total:
        frame_type, flags, stream_id, start, end = read_frame(message, offset)
        yield frame_type, flags, stream_id, start, end - start
        offset = end


def encode_probe(token: int) -> bytes:
    """An endpoint's probe: 8 bytes the relay echoes (the endpoint's own token)."""
    return HEADER.pack(_PROBE, 0, 0, 8) + PROBE_BODY.pack(token)


def encode_probe_answer(probe: bytes | memoryview, stamp: int) -> bytes:
    """The relay's answer to a probe's 8-byte payload: the same 8 bytes, then
    the relay's clock when it read the probe, in microseconds (u64, its own origin)."""
    if len(probe) != 8:
        raise FrameError(f"PROBE to the relay must carry 8 bytes, got {len(probe)}")
    return (
        HEADER.pack(_PROBE, 0, 0, 16)
        + bytes(probe)
        + PROBE_BODY.pack(stamp & 0xFFFF_FFFF_FFFF_FFFF)
    )


def decode_probe_answer(payload: memoryview | bytes) -> tuple[int, int]:
    """A relay's answer: (the endpoint's token, the relay's clock in us)."""
    if len(payload) != 16:
        raise FrameError(f"PROBE from the relay must carry 16 bytes, got {len(payload)}")
    token, stamp = PROBE_ANSWER_BODY.unpack_from(payload)
    return int(token), int(stamp)


def decode_window_increment(payload: memoryview | bytes) -> int:
    (increment,) = WINDOW_UPDATE_BODY.unpack_from(payload)
    if increment == 0:
        raise FrameError("WINDOW_UPDATE with a zero increment")
    return int(increment)
