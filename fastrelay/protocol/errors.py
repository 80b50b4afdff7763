"""Typed errors that carry their reply, so adapters never guess a code.

Connection-level errors close the WebSocket with `close_code`; stream-level
errors abort one stream with TUNNEL_ERROR and leave the connection alone; HTTP
errors carry the status that client_a answers the browser with.
"""

from __future__ import annotations

from fastrelay.protocol.status import Failure

# RFC 6455 close codes used by fastrelay.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013


class ProtocolError(Exception):
    """The peer broke the wire protocol: close the whole WebSocket."""

    close_code = CLOSE_PROTOCOL_ERROR
    kind = "protocol"


class FrameError(ProtocolError):
    """A mux frame header that cannot be parsed or is inconsistent."""

    kind = "malformed_frame"


class ControlMessageError(ProtocolError):
    """A control payload (JSON) that is not what its frame type requires."""

    kind = "malformed_control"


class MessageTooBig(ProtocolError):
    """A WebSocket message over the receiver's size limit."""

    close_code = CLOSE_MESSAGE_TOO_BIG
    kind = "message_too_big"


class BudgetExceeded(ProtocolError):
    """More bytes queued for a connection than the relay holds for one: its
    receiver granted more credit than it reads. The connection is cut off."""

    close_code = CLOSE_POLICY_VIOLATION
    kind = "connection_buffer"


class StreamError(Exception):
    """One stream broke the rules: abort that stream only, with TUNNEL_ERROR."""

    kind = "stream"


class IllegalTransition(StreamError):
    kind = "illegal_transition"

    def __init__(self, state: str, event: str) -> None:
        super().__init__(f"{event} is not allowed in state {state}")
        self.state = state
        self.event = event


class FlowControlError(StreamError):
    """The peer sent more bytes than the credit it was given."""

    kind = "flow_control"


class HttpError(Exception):
    """A request (400, 431) or response head (502) client_a must refuse, with
    the status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason

    @property
    def failure(self) -> Failure:
        """Its row in the failure table (fastrelay/protocol/status.py)."""
        return _HTTP_FAILURES.get(self.status, Failure.BAD_REQUEST)


_HTTP_FAILURES = {
    400: Failure.BAD_REQUEST,
    431: Failure.HEAD_TOO_LARGE,
    502: Failure.BAD_RESPONSE,
    504: Failure.RESPONSE_TIMEOUT,
}
