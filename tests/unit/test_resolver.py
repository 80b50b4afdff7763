"""The agent's resolvers against a real DNS server on loopback (tests/support/dns_server.py).

c-ares (the default): answers, their TTL cache, one query per name in flight, the failures'
messages, and the reason it is the default: names whose authority never answers do not hold
up any other look-up. The system resolver: IP literals without a look-up, and a name."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import pytest
import uvloop
from support.dns_server import DnsServer

from fastrelay.resolver import CaresResolver, LookupFailure, SystemResolver

T = TypeVar("T")
TABLE = {
    "both.test": ["192.0.2.1", "2001:db8::1"],
    "v4.test": ["192.0.2.4"],
    "two.test": ["192.0.2.2", "192.0.2.3"],
    "held.test": ["192.0.2.9"],
}
BOTH = ["192.0.2.1", "2001:db8::1"]
LOOPS = pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])


def run(loop_name: str, main: Callable[[], Awaitable[T]]) -> T:
    async def wrapped() -> T:
        return await asyncio.wait_for(main(), 20)  # a bound for the test, not an assertion

    return (uvloop.run if loop_name == "uvloop" else asyncio.run)(wrapped())


async def serve(
    ttl: int = 60, stall: Iterable[str] = (), hold: Iterable[str] = ()
) -> tuple[DnsServer, str, asyncio.BaseTransport]:
    server = DnsServer(TABLE, ttl=ttl, stall=stall, hold=hold)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", 0)
    )
    return server, f"127.0.0.1:{transport.get_extra_info('sockname')[1]}", transport


@LOOPS
def test_a_name_resolves_to_its_a_and_aaaa_records(loop_name: str) -> None:
    async def main() -> tuple[list[str], list[str], int]:
        _server, address, transport = await serve()
        resolver = CaresResolver([address])
        try:
            both = await resolver.resolve("both.test")
            two = await resolver.resolve("two.test")
            return both, two, resolver.counts["ok"]
        finally:
            await resolver.close()
            transport.close()

    both, two, ok = run(loop_name, main)
    assert sorted(both) == ["192.0.2.1", "2001:db8::1"]
    assert sorted(two) == ["192.0.2.2", "192.0.2.3"]
    assert ok == 2


@pytest.mark.parametrize("host", ["192.0.2.7", "::1", "2001:DB8::0:1"])
def test_an_ip_literal_is_its_own_answer_without_a_question(host: str) -> None:
    async def main() -> tuple[list[str], list[str], int]:
        server, address, transport = await serve()
        resolver = CaresResolver([address])
        try:
            cares = await resolver.resolve(host)
            system = await SystemResolver().resolve(host)
            return cares, system, sum(server.questions.values())
        finally:
            await resolver.close()
            transport.close()

    cares, system, questions = run("uvloop", main)
    expected = host if host != "2001:DB8::0:1" else "2001:db8::1"
    assert cares == system == [expected]
    assert questions == 0


def test_the_system_resolver_looks_up_a_name_and_reports_one_that_fails() -> None:
    async def main() -> tuple[list[str], str]:
        resolver = SystemResolver()
        found = await resolver.resolve("localhost")
        with pytest.raises(LookupFailure) as info:
            await resolver.resolve("no-such-host.invalid")
        return found, str(info.value)

    found, message = run("uvloop", main)
    assert "127.0.0.1" in found
    assert message.startswith("DNS lookup of no-such-host.invalid failed: ")


@LOOPS
def test_an_answer_is_kept_for_its_ttl_and_asked_again_after(loop_name: str) -> None:
    async def main() -> tuple[int, int, int, dict[str, int]]:
        server, address, transport = await serve(ttl=1)
        resolver = CaresResolver([address])
        try:
            assert sorted(await resolver.resolve("both.test")) == BOTH
            asked = server.questions["both.test"]
            assert sorted(await resolver.resolve("both.test")) == BOTH
            again = server.questions["both.test"]
            await asyncio.sleep(1.2)  # past the TTL (a wait, not an assertion on time)
            assert sorted(await resolver.resolve("both.test")) == BOTH
            return asked, again, server.questions["both.test"], dict(+resolver.counts)
        finally:
            await resolver.close()
            transport.close()

    asked, again, after, counts = run(loop_name, main)
    # A and AAAA, once each. (A name with no AAAA record would not be asked again: c-ares
    # keeps an answer with no records for an hour, whatever the SOA says.)
    assert asked == again == 2
    assert after == 4
    assert counts == {"ok": 2, "cached": 1}


def test_a_zero_ttl_is_never_kept() -> None:
    async def main() -> tuple[int, int, dict[str, int]]:
        server, address, transport = await serve(ttl=0)
        resolver = CaresResolver([address])
        try:
            for _ in range(3):
                assert sorted(await resolver.resolve("both.test")) == BOTH
            return server.questions["both.test"], resolver.cached_names(), dict(+resolver.counts)
        finally:
            await resolver.close()
            transport.close()

    questions, cached, counts = run("uvloop", main)
    assert questions == 3 * 2  # A and AAAA each time
    assert cached == 0
    assert counts == {"ok": 3}


def test_with_no_cache_every_open_asks_c_ares() -> None:
    async def main() -> tuple[int, dict[str, int]]:
        _server, address, transport = await serve(ttl=60)
        resolver = CaresResolver([address], cache_names=0)
        try:
            for _ in range(3):
                assert await resolver.resolve("v4.test") == ["192.0.2.4"]
            return resolver.cached_names(), dict(+resolver.counts)
        finally:
            await resolver.close()
            transport.close()

    cached, counts = run("uvloop", main)
    assert cached == 0
    assert counts == {"ok": 3}


def test_the_cache_keeps_at_most_its_count_of_names() -> None:
    async def main() -> tuple[int, dict[str, int]]:
        _server, address, transport = await serve()
        resolver = CaresResolver([address], cache_names=2)
        try:
            for name in ("both.test", "v4.test", "two.test"):
                await resolver.resolve(name)
            cached = resolver.cached_names()
            await resolver.resolve("two.test")  # the newest is kept
            await resolver.resolve("both.test")  # the oldest went first: asked again
            return cached, dict(+resolver.counts)
        finally:
            await resolver.close()
            transport.close()

    cached, counts = run("uvloop", main)
    assert cached == 2
    assert counts == {"ok": 4, "cached": 1}


@LOOPS
def test_a_channel_retires_after_its_queries_and_its_own_cache_with_it(loop_name: str) -> None:
    """c-ares caches answers itself, bounded only by TTL; a channel that has sent
    `rotate_after` queries is replaced, so that cache holds at most that many names. A query
    in flight on the retired channel is still answered."""

    async def main() -> tuple[list[str], int, int, int, int]:
        server, address, transport = await serve(hold=["held.test"])
        resolver = CaresResolver([address], cache_names=0, rotate_after=3)
        try:
            held = asyncio.ensure_future(resolver.resolve("held.test"))  # channel 1
            for name in ("v4.test", "two.test"):  # channel 1 has sent 3
                await resolver.resolve(name)
            asked = server.questions["v4.test"]
            await resolver.resolve("v4.test")  # channel 2: its cache is empty
            asked_again = server.questions["v4.test"]
            server.release()
            answer = await held
            return answer, asked, asked_again, resolver.channels, len(resolver._retiring)
        finally:
            await resolver.close()
            transport.close()

    answer, asked, asked_again, channels, retiring = run(loop_name, main)
    assert answer == ["192.0.2.9"]
    assert (asked, asked_again) == (2, 4)
    assert channels == 2
    assert retiring == 1  # dropped at the next rotation, closed once its query is answered


@LOOPS
def test_opens_of_one_name_share_one_query_and_a_waiter_leaving_ends_nothing(
    loop_name: str,
) -> None:
    async def main() -> tuple[int, list[list[str]], dict[str, int], int]:
        server, address, transport = await serve(hold=["held.test"])
        resolver = CaresResolver([address])
        try:
            waiters = [asyncio.ensure_future(resolver.resolve("held.test")) for _ in range(20)]
            for _ in range(200):  # until the server holds both questions (A and AAAA)
                if len(server.held) == 2:
                    break
                await asyncio.sleep(0.01)
            waiters[0].cancel()  # one open gives up (its dial timed out, its stream ended)
            await asyncio.sleep(0)
            server.release()
            answers = await asyncio.gather(*waiters[1:])
            return len(server.held), answers, dict(+resolver.counts), resolver.cached_names()
        finally:
            await resolver.close()
            transport.close()

    held, answers, counts, cached = run(loop_name, main)
    assert answers == [["192.0.2.9"]] * 19
    assert counts["ok"] == 1 and counts["joined"] == 19
    assert cached == 1
    assert held == 0


@LOOPS
def test_names_that_never_answer_hold_up_no_other_name(loop_name: str) -> None:
    """The reason c-ares is the default: 50 look-ups whose authority never answers are in
    flight (under getaddrinfo, two such names take every thread libuv gives look-ups, and
    every later look-up waits ~10 s behind them); another name still resolves at once."""

    async def main() -> tuple[list[str], int, int]:
        server, address, transport = await serve(stall=["stall.test"])
        resolver = CaresResolver([address], timeout=30, tries=1)
        try:
            stalled = [
                asyncio.ensure_future(resolver.resolve(f"n{i}.stall.test")) for i in range(50)
            ]
            for _ in range(200):  # until every stalled question reached the server
                if sum(n.endswith("stall.test") for n in server.questions) == 50:
                    break
                await asyncio.sleep(0.01)
            answer = await resolver.resolve("both.test")
            pending = sum(not s.done() for s in stalled)
            for s in stalled:
                s.cancel()
            return answer, pending, sum(n.endswith("stall.test") for n in server.questions)
        finally:
            await resolver.close()
            transport.close()

    answer, pending, asked = run(loop_name, main)
    assert sorted(answer) == ["192.0.2.1", "2001:db8::1"]
    assert asked == 50
    assert pending == 50


@pytest.mark.parametrize(
    ("name", "result", "message"),
    [
        ("nowhere.test", "not_found", "DNS lookup of nowhere.test failed: Domain name not found"),
        (
            "x.stall.test",
            "timeout",
            "DNS lookup of x.stall.test failed: Timeout while contacting DNS servers",
        ),
    ],
)
def test_a_failed_look_up_says_why_and_is_counted(name: str, result: str, message: str) -> None:
    async def main() -> tuple[str, dict[str, int], int]:
        _server, address, transport = await serve(stall=["stall.test"])
        resolver = CaresResolver([address], timeout=0.2, tries=1)
        try:
            with pytest.raises(LookupFailure) as info:
                await resolver.resolve(name)
            return str(info.value), dict(+resolver.counts), resolver.cached_names()
        finally:
            await resolver.close()
            transport.close()

    got, counts, cached = run("uvloop", main)
    assert got == message
    assert counts == {result: 1}
    assert cached == 0


@LOOPS
def test_closing_the_resolver_ends_its_queries_on_the_loops_thread(loop_name: str) -> None:
    """At shutdown the queries still in flight fail here, on the loop's thread; pycares then
    destroys the channel on a thread of its own, which must not reach the loop."""

    async def main() -> tuple[str, int, bool, int]:
        server, address, transport = await serve(stall=["stall.test"])
        resolver = CaresResolver([address], timeout=30, tries=1)
        try:
            waiter = asyncio.ensure_future(resolver.resolve("x.stall.test"))
            for _ in range(200):  # until the question is out
                if server.questions["x.stall.test"]:
                    break
                await asyncio.sleep(0.01)
            channel = resolver._channel
            assert channel is not None
            await resolver.close()
            with pytest.raises(LookupFailure) as info:
                await waiter
            return str(info.value), channel.pending, channel.closed, len(channel.fds)
        finally:
            transport.close()

    message, pending, closed, watched = run(loop_name, main)
    assert message.startswith("DNS lookup of x.stall.test failed: ")
    assert (pending, closed, watched) == (0, True, 0)
