"""One table from failure to what every program says about it.

A `Failure` is one way a browser request can fail, wherever it is noticed:
client_a reading the request, the agent or client_a dialling the target, the
relay routing the open, the response coming back. Each has

* `status`: the HTTP status the browser gets (and the CONNECT_RESPONSE carries);
* `result`: the `result` label it is counted under (client_a's requests, the
  relay's streams) and logged with in the access log;
* `reason`: the machine-readable word on the wire (CONNECT_RESPONSE `reason`)
  and at the end of the browser's error page, so nobody matches on prose;
* `socks`: the RFC 1928 reply code a SOCKS5 client gets instead of the HTTP
  status (client_a's SOCKS5 listener, fastrelay/protocol/socks.py). A failure
  without a closer code gets 0x01, general failure (the default of the column).

The same failure gets the same status on every route: a dial that times out
is a 504 whether the agent or client_a dialled. `PHRASES` is the one table of
reason phrases, for client_a's answers, the admin ports and the relay.
"""

from __future__ import annotations

import enum
import errno

PHRASES = {
    200: "OK",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
# The seed's statusDescription for a CONNECT_RESPONSE 200.
CONNECTION_ESTABLISHED = "Connection Established"


def phrase(status: int) -> str:
    return PHRASES.get(status, "Error")


class SocksReply(enum.IntEnum):
    """The REP field of a SOCKS5 reply (RFC 1928 section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02  # connection not allowed by ruleset
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


_S = SocksReply


class Failure(enum.Enum):
    """(reason, status, result, socks) for every way a request fails."""

    reason: str
    status: int
    result: str
    socks: SocksReply

    def __init__(
        self, reason: str, status: int, result: str, socks: SocksReply = _S.GENERAL_FAILURE
    ) -> None:
        self.reason = reason
        self.status = status
        self.result = result
        self.socks = socks

    # The browser's request, at client_a (either route).
    BAD_REQUEST = ("bad_request", 400, "bad_request", _S.GENERAL_FAILURE)
    HEAD_TOO_LARGE = ("head_too_large", 431, "bad_request", _S.GENERAL_FAILURE)
    HEADER_TIMEOUT = ("header_timeout", 408, "bad_request", _S.GENERAL_FAILURE)
    CLIENT_BUSY = ("max_connections", 503, "limited", _S.GENERAL_FAILURE)
    # Dialling the target: the agent (relay route) or client_a (direct route).
    DENIED = ("denied", 403, "denied", _S.NOT_ALLOWED)
    DNS = ("dns", 502, "dial_failed", _S.HOST_UNREACHABLE)
    REFUSED = ("refused", 502, "refused", _S.CONNECTION_REFUSED)
    # EHOSTUNREACH and ENETUNREACH alike: the wire's `reason` does not tell them apart.
    UNREACHABLE = ("unreachable", 502, "dial_failed", _S.HOST_UNREACHABLE)
    DIAL_ERROR = ("error", 502, "dial_failed", _S.GENERAL_FAILURE)
    DIAL_TIMEOUT = ("timeout", 504, "timeout", _S.TTL_EXPIRED)
    # The target's response (plain-HTTP requests, either route).
    BAD_RESPONSE = ("bad_response", 502, "bad_response", _S.GENERAL_FAILURE)
    RESPONSE_TIMEOUT = ("response_timeout", 504, "timeout", _S.TTL_EXPIRED)
    # The relay route only. Not connected to the relay: the network client_a routes
    # listed hosts through is out of reach (0x03); the relay has no agent: 0x04.
    NOT_CONNECTED = ("not_connected", 503, "no_agent", _S.NETWORK_UNREACHABLE)
    NO_AGENT = ("no_agent", 503, "no_agent", _S.HOST_UNREACHABLE)
    # No agent of the open's pool (another pool may have some).
    NO_POOL_AGENT = ("no_agent_in_pool", 503, "no_agent", _S.HOST_UNREACHABLE)
    DRAINING = ("draining", 503, "no_agent", _S.HOST_UNREACHABLE)
    STREAM_LIMIT = ("stream_limit", 503, "limited", _S.GENERAL_FAILURE)
    OPEN_LIMIT = ("open_limit", 503, "limited", _S.GENERAL_FAILURE)
    AGENT_BUSY = ("agent_busy", 503, "limited", _S.GENERAL_FAILURE)
    # The client's token holds its share of every agent (--max-token-share).
    TOKEN_SHARE = ("token_share", 503, "limited", _S.GENERAL_FAILURE)
    OPEN_TIMEOUT = ("open_timeout", 504, "timeout", _S.TTL_EXPIRED)
    RELAY_LOST = ("relay_lost", 502, "error", _S.GENERAL_FAILURE)
    TUNNEL_ERROR = ("tunnel_error", 502, "error", _S.GENERAL_FAILURE)

    def body(self, detail: str) -> str:
        """The browser's error page: the detail, then the reason word."""
        return f"{detail} ({self.reason})\n"


BY_REASON = {failure.reason: failure for failure in Failure}
# Relay-route failures that mean no relay or no agent could take the request, all decided
# before the open succeeded (so nothing of the request reached a target through the relay).
# A rule with fallback=direct dials the host directly on these; every other failure (the
# agent's 403 above all) reaches the browser whatever the rule says.
NO_RELAY_OR_AGENT = frozenset(
    {
        Failure.NOT_CONNECTED,
        Failure.NO_AGENT,
        Failure.NO_POOL_AGENT,  # none in the rule's pool: as if there were no agent
        Failure.DRAINING,
        Failure.RELAY_LOST,
    }
)
# Results a request can be counted under, in the order metrics list them.
RESULTS = ("ok", *dict.fromkeys(failure.result for failure in Failure))


_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})


def dial_failure(exc: OSError, host: str, port: int) -> tuple[Failure, str]:
    """A failed TCP connect to host:port, as the agent and client_a both answer it."""
    if isinstance(exc, ConnectionRefusedError):
        return Failure.REFUSED, f"connection to {host}:{port} refused"
    failure = Failure.UNREACHABLE if exc.errno in _UNREACHABLE else Failure.DIAL_ERROR
    return failure, f"cannot connect to {host}:{port}: {exc.strerror or exc}"


def dial_timeout(host: str, port: int, timeout: float) -> tuple[Failure, str]:
    return Failure.DIAL_TIMEOUT, f"no connection to {host}:{port} within {timeout:g} s"


def failure_of(status: int, reason: str | None) -> Failure:
    """The failure a CONNECT_RESPONSE reports: by its reason word, else by status."""
    if reason is not None and reason in BY_REASON:
        return BY_REASON[reason]
    if status == 403:
        return Failure.DENIED
    if status == 504:
        return Failure.DIAL_TIMEOUT
    if status == 503:
        return Failure.NO_AGENT
    return Failure.DIAL_ERROR
