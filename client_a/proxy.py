"""client_a's routing decision and the opening of each route.

A listed host (see `rules.py`) goes through the relay, anything else
direct. The browser hears the true outcome: `200 Connection Established` only
after the agent's CONNECT_RESPONSE 200, and the relay's or agent's failure
status (403, 502, 503, 504) otherwise.

A rule with ``fallback=direct`` fails open: when no relay or no agent can take
the request (`NO_RELAY_OR_AGENT`, always before the open succeeded, so nothing
of the request went through the relay), client_a dials the host itself and
counts the request under route "fallback".
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from client_a.browser import BrowserConnection
from client_a.config import ClientConfig
from client_a.pac import PAC_PATH, PacServer
from client_a.routes import BrowserSocket, DirectPipe, DirectUpstream, RelayRoute
from client_a.rules import DEFAULT_RULE, Fallback, Rule, Rules
from client_a.stats import ClientStats
from fastrelay.accesslog import AccessLog
from fastrelay.io.carrier import Carrier
from fastrelay.io.pool import CarrierPool
from fastrelay.io.tunnel import TCP_LOW_WATER
from fastrelay.protocol.frames import FrameType
from fastrelay.protocol.hostname import HostnameError, canonical_ipv4, normalize_hostname
from fastrelay.protocol.http import OriginFormRequest, ProxyRequest
from fastrelay.protocol.messages import OpenStream, format_authority, new_session_id
from fastrelay.protocol.session import End, Stream
from fastrelay.protocol.status import NO_RELAY_OR_AGENT, Failure, dial_failure, dial_timeout
from fastrelay.resolver import LookupFailure, make_resolver

log = logging.getLogger("fastrelay.client")

_PRIVATE_HEADERS = frozenset({"proxy-authorization", "proxy-authenticate"})
# With the last dial of the relay failed, how long a request waits for a redial.
NOT_CONNECTED_WAIT = 1.0
# Enum members as module names: on Python 3.11 each `FrameType.X` in a function
# goes through EnumType's attribute hook (~850 instructions; bench/README.md).
_CONNECT = FrameType.CONNECT
_REQUEST = FrameType.REQUEST
_FINISHED = End.FINISHED


class Proxy:
    def __init__(
        self, config: ClientConfig, rules: Rules, access_log: AccessLog | None = None
    ) -> None:
        self.config = config
        self.rules = rules
        self.stats = ClientStats()
        self.access_log = access_log
        self.tasks: set[asyncio.Task[None]] = set()
        self.pool: CarrierPool | None = None
        self.pac = PacServer()  # its listen address is set once the proxy port is bound
        self.resolver = make_resolver(config.resolver, config.dns_server, config.dns_cache)

    def serve_pac(self, method: str, headers: dict[str, str], local_host: str | None) -> bytes:
        """The response to a request for /proxy.pac (proxy port or admin port)."""
        return self.pac.respond(self.rules, method, headers, local_host)

    def local_request(self, request: OriginFormRequest, sockname: object) -> bytes | None:
        """client_a's answer to an origin-form request on the proxy port, or None (a 400)."""
        if request.target.partition("?")[0] != PAC_PATH:
            return None
        local = sockname[0] if isinstance(sockname, tuple) else None
        return self.serve_pac(request.method, request.headers, local)

    def count(self, route: str | None, result: str) -> None:
        self.stats.requests[route or "none", result] += 1

    def log_access(
        self,
        browser: BrowserConnection,
        route: str,
        result: str,
        session: str = "-",
        bytes_up: int = 0,
        bytes_down: int = 0,
        fields: dict[str, str] | None = None,
    ) -> None:
        """One access-log line for a finished (or refused) browser request."""
        if self.access_log is None or browser.request is None:
            return
        request = browser.request
        self.access_log.write(
            session=session,
            client=browser.peer(),
            target=format_authority(request.host, request.port),
            route=route,
            result=result,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            duration=time.monotonic() - browser.received_at,
            proto=browser.proto,
            **(fields or {}),
        )

    def dispatch(self, browser: BrowserConnection, request: ProxyRequest) -> None:
        # An IPv4 literal goes on as its dotted quad (127.1 is 127.0.0.1), so that the rules,
        # the agent's policy and the direct dial all judge and reach the same address.
        canonical = canonical_ipv4(request.host)
        if canonical is not None and canonical != request.host:
            request = dataclasses.replace(request, host=canonical)
            browser.request = request
        rule = self.rules.lookup(request.host)
        if rule is not None:
            self.open_relay(browser, request, rule=rule)
        else:
            self.start_direct(browser, request, "direct")

    def start_direct(self, browser: BrowserConnection, request: ProxyRequest, route: str) -> None:
        task = asyncio.get_running_loop().create_task(self.open_direct(browser, request, route))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def fall_back(
        self, browser: BrowserConnection, rule: Rule, failure: Failure, detail: str
    ) -> bool:
        """With a fallback=direct rule and a failure that means no relay or agent could take
        the request, dial the host directly instead (True); else False: the browser gets the
        failure.  Only ever called before the relay open succeeded."""
        if rule.fallback is not Fallback.DIRECT or failure not in NO_RELAY_OR_AGENT:
            return False
        request = browser.request
        if browser.closed or request is None:
            return True  # nobody to answer
        log.info(
            "%s: %s (%s); fallback=direct, dialling it directly",
            format_authority(request.host, request.port),
            detail,
            failure.reason,
        )
        self.start_direct(browser, request, "fallback")
        return True

    # --- through the relay ---

    def open_relay(
        self,
        browser: BrowserConnection,
        request: ProxyRequest,
        retry_of: RelayRoute | None = None,
        rule: Rule = DEFAULT_RULE,
    ) -> None:
        """Open on the least-busy ready carrier (another relay than `retry_of`'s
        if there is one); with none ready, wait for one up to --open-timeout.
        The relay routes the open to an agent of the rule's pool (a retry keeps
        its first try's rule)."""
        pool = self.pool
        if retry_of is not None:
            rule = retry_of.rule
        carrier = None if pool is None else pool.pick(retry_of.carrier if retry_of else None)
        if carrier is not None and self._open_on(carrier, browser, request, retry_of, rule):
            return
        if pool is not None and pool.ready and all(c.full for c in pool.ready):
            limit = pool.ready[0].credit.max_streams
            self._relay_failed(
                browser,
                Failure.STREAM_LIMIT,
                f"every relay connection carries its limit of {limit} streams",
                retry_of,
            )
            return
        task = asyncio.get_running_loop().create_task(
            self._open_when_ready(browser, request, retry_of, rule)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open_when_ready(
        self,
        browser: BrowserConnection,
        request: ProxyRequest,
        retry_of: RelayRoute | None,
        rule: Rule,
    ) -> None:
        pool = self.pool
        avoid = retry_of.carrier if retry_of is not None else None
        carrier = None
        loop = asyncio.get_running_loop()
        # A fail-open rule does not wait for a redial of a relay known to be unavailable.
        skip_wait = rule.fallback is Fallback.DIRECT and (
            pool is None or pool.unavailable(loop.time())
        )
        if pool is not None and not skip_wait:
            # While the relay cannot be reached (or refuses the token) a request
            # waits only briefly for a redial, then hears why.
            carrier = await pool.wait_pick(self.config.open_timeout, avoid, NOT_CONNECTED_WAIT)
        if browser.closed:
            return
        if carrier is None or not self._open_on(carrier, browser, request, retry_of, rule):
            detail = "client_a is not connected to the relay"
            if pool is not None and pool.unavailable(loop.time()):
                detail = f"{detail}: {pool.health.last_failure}"
            if not self.fall_back(browser, rule, Failure.NOT_CONNECTED, detail):
                self._relay_failed(browser, Failure.NOT_CONNECTED, detail, retry_of)

    def _relay_failed(
        self,
        browser: BrowserConnection,
        failure: Failure,
        detail: str,
        retry_of: RelayRoute | None = None,
    ) -> None:
        self.count("relay", failure.result)
        extra = {"reason": failure.reason}
        if retry_of is not None:
            extra["retry_of"] = retry_of.tried()
        self.log_access(browser, "relay", failure.result, fields=extra)
        browser.reply(failure, detail)

    def _open_on(
        self,
        carrier: Carrier,
        browser: BrowserConnection,
        request: ProxyRequest,
        retry_of: RelayRoute | None,
        rule: Rule,
    ) -> bool:
        transport = browser.transport
        if transport is None or transport.is_closing():
            return False
        session_id = retry_of.stream.session_id if retry_of and retry_of.stream else None
        kind = _CONNECT if request.is_connect else _REQUEST
        # Proxy credentials are for client_a only and must not travel on.
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _PRIVATE_HEADERS}
        message = OpenStream(
            kind,
            session_id or new_session_id(),
            request.host,
            request.port,
            request.method,
            request.url,
            headers,
            pool=rule.pool,
        )
        first_try = retry_of.tried() if retry_of is not None else None
        route = RelayRoute(self, browser, carrier, request, first_try, rule)
        transport.set_write_buffer_limits(high=TCP_LOW_WATER, low=TCP_LOW_WATER)
        stream = carrier.session.open(message, BrowserSocket(route, transport), time.monotonic())
        if stream is None:
            return False
        stream.owner = route
        route.stream = stream
        return True

    # carrier callbacks
    def on_opened(self, carrier: Carrier, stream: Stream) -> None:
        route = stream.owner
        assert isinstance(route, RelayRoute)
        route.opened(stream)

    def on_open(self, carrier: Carrier, stream: Stream, request: OpenStream) -> None:
        pass  # the session refuses opens at client_a (counted as unexpected_open)

    def on_stream_end(self, carrier: Carrier, stream: Stream) -> None:
        route = stream.owner
        assert isinstance(route, RelayRoute)
        stream.owner = None  # the last event of the stream: no route <-> stream cycle is left
        route.ended(stream)
        if route.result in ("retried", "fallback"):  # the retry's own line follows
            return
        result = route.result or ("ok" if stream.end is _FINISHED else "aborted")
        self.log_access(
            route.browser,
            "relay",
            result,
            stream.session_id,
            stream.bytes_up,
            stream.bytes_down,
            route.log_fields(),
        )

    # --- direct ---

    async def open_direct(
        self, browser: BrowserConnection, request: ProxyRequest, route: str = "direct"
    ) -> None:
        """Dial the target ourselves; `route` is "direct" (an unlisted host) or "fallback"
        (a fallback=direct rule's host that no relay or agent could take)."""
        try:
            host = normalize_hostname(request.host)  # the name the resolver looks up
        except HostnameError as exc:
            self._direct_failed(browser, Failure.DNS, str(exc), route)
            return
        pipe = DirectPipe(self, browser, request, route)
        try:
            transport, upstream = await asyncio.wait_for(
                self._dial_direct(pipe, host, request.port), self.config.dial_timeout
            )
        except TimeoutError:
            failure, detail = dial_timeout(request.host, request.port, self.config.dial_timeout)
            self._direct_failed(browser, failure, detail, route)
            return
        except LookupFailure as exc:
            self._direct_failed(browser, Failure.DNS, str(exc), route)
            return
        except OSError as exc:
            self._direct_failed(browser, *dial_failure(exc, request.host, request.port), route)
            return
        if browser.closed or browser.transport is None:
            transport.close()
            return
        pipe.upstream = transport
        if request.is_connect:
            browser.transport.write(browser.established())
        else:
            transport.write(request.head)
        self.count(route, "ok")
        pipe.opened()
        upstream.release()  # what the target sent before the answer above, after it
        browser.start(pipe)  # may answer 400 already: a malformed body in the held bytes
        if not browser.transport.is_closing():
            browser.transport.resume_reading()

    async def _dial_direct(
        self, pipe: DirectPipe, host: str, port: int
    ) -> tuple[asyncio.Transport, DirectUpstream]:
        """Connect the first of the host's addresses that answers, in the resolver's order.

        The loop's own transport, not aiofastnet's: on uvloop aiofastnet watches the socket
        with add_reader, which stops for good once the kernel reports an error, so a target's
        last bytes and its reset arriving together left the reset unseen and the browser
        waiting forever (tests/e2e/test_abort_resets.py). uvloop's transport reads on to the
        error; it also connects an IP literal in C. The name is looked up by the resolver
        (fastrelay/resolver.py), never by the loop: a name whose DNS never answers must not
        hold up the others (libuv's thread pool would)."""
        loop = asyncio.get_running_loop()
        addresses = await self.resolver.resolve(host)
        failed: OSError | None = None
        for ip in addresses:
            try:
                return await loop.create_connection(lambda: DirectUpstream(pipe), ip, port)
            except OSError as exc:
                failed = exc
        assert failed is not None  # the resolver gives at least one address
        raise failed

    def _direct_failed(
        self, browser: BrowserConnection, failure: Failure, detail: str, route: str = "direct"
    ) -> None:
        self.count(route, failure.result)
        self.log_access(browser, route, failure.result)
        browser.reply(failure, detail)
