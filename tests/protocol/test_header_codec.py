"""`read_header` and `write_header` against `HEADER.unpack_from` and `HEADER.pack_into`.

Compiled, both read and store the ten header bytes in place (frames.pxd) and
hand anything out of range to struct; these properties hold them to struct's
results and struct's errors, byte for byte and message for message. Under
FASTRELAY_PURE_PYTHON=1 (`make test` runs this file both ways) they are struct
itself, so the same properties pin the fallback.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from fastrelay.protocol.frames import HEADER, read_header, write_header

# The kinds of object a header is read from: what picows hands the relay (a
# memoryview, also sliced), what the endpoints and tests pass (bytes, bytearray),
# and what struct refuses (a strided view, a released one, a str).
_KINDS = ("bytes", "bytearray", "memoryview", "sliced", "strided", "released", "text")


def _as(kind: str, data: bytes) -> Any:
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(data)
    if kind == "sliced":  # a view that starts one byte into a larger buffer
        return memoryview(b"\xee" + data)[1:]
    if kind == "strided":
        return memoryview(data + data)[::2]
    if kind == "released":
        view = memoryview(data)
        view.release()
        return view
    return data.decode("latin-1")


def _outcome(call: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", call(*args)
    except Exception as exc:  # the comparison is the point: type and message
        return type(exc).__name__, str(exc)


@given(
    data=st.binary(max_size=40),
    offset=st.integers(min_value=-45, max_value=45),
    kind=st.sampled_from(_KINDS),
)
@example(data=bytes(range(10)), offset=0, kind="memoryview")
@example(data=b"\xff" * 10, offset=0, kind="sliced")  # every field at its largest
@example(data=bytes(20), offset=11, kind="bytes")  # one byte short
@example(data=bytes(20), offset=-10, kind="bytearray")  # struct counts from the end
def test_read_header_is_unpack_from(data: bytes, offset: int, kind: str) -> None:
    message = _as(kind, data)
    got = _outcome(read_header, message, offset)
    want = _outcome(HEADER.unpack_from, message, offset)
    if got[0] == "ok":
        assert tuple(got[1]) == want[1]
    else:
        assert got == want


_FIELD = st.one_of(
    st.integers(min_value=0, max_value=0xFF),
    st.integers(min_value=0, max_value=0xFFFFFFFF),
    st.integers(min_value=-(2**40), max_value=2**40),
)


def _target(kind: str, buf: bytearray, fill: bytes) -> Any:
    return buf if kind == "bytearray" else memoryview(buf) if kind == "memoryview" else fill


@given(
    size=st.integers(min_value=0, max_value=30),
    at=st.integers(min_value=-35, max_value=35),
    fields=st.tuples(_FIELD, _FIELD, _FIELD, _FIELD),
    kind=st.sampled_from(("bytearray", "memoryview", "bytes")),
)
@example(size=10, at=0, fields=(4, 1, 0x12345678, 100), kind="bytearray")
@example(size=10, at=0, fields=(0xFF, 0xFF, 0xFFFFFFFF, 0xFFFFFFFF), kind="bytearray")
@example(size=10, at=0, fields=(0x100, 0, 1, 1), kind="bytearray")  # type out of range
@example(size=10, at=0, fields=(4, 0, 2**32, 1), kind="bytearray")  # stream id out of range
@example(size=10, at=0, fields=(4, 0, 1, -1), kind="bytearray")  # length out of range
@example(size=19, at=10, fields=(4, 0, 1, 1), kind="bytearray")  # one byte short
@example(size=20, at=-10, fields=(4, 0, 1, 1), kind="bytearray")  # from the end
@example(size=10, at=0, fields=(4, 0, 1, 1), kind="bytes")  # read-only: struct's error
def test_write_header_is_pack_into(
    size: int, at: int, fields: tuple[int, int, int, int], kind: str
) -> None:
    fill = bytes((i * 7 + 3) & 0xFF for i in range(size))  # not zeros: every byte is checked
    mine, theirs = bytearray(fill), bytearray(fill)
    target_mine, target_theirs = _target(kind, mine, fill), _target(kind, theirs, fill)
    got = _outcome(write_header, target_mine, at, *fields)
    want = _outcome(HEADER.pack_into, target_theirs, at, *fields)
    assert got == want
    assert mine == theirs  # the same bytes, and nothing written outside the header


def test_write_header_then_read_header_round_trips() -> None:
    buf = bytearray(b"\x00" * 3 + b"payload")
    buf[3:3] = bytes(10)
    write_header(buf, 3, 4, 1, 0x00010002, 7)
    assert read_header(buf, 3) == (4, 1, 0x00010002, 7)
    assert bytes(buf[3:13]) == struct.pack("!BBII", 4, 1, 0x00010002, 7)
