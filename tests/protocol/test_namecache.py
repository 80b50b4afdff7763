"""The agent's name cache: answers kept for their TTL (cut to max_ttl), at most max_names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastrelay.protocol.namecache import NameCache

NAMES = st.sampled_from(["a.test", "b.test", "c.test", "d.test", "e.test"])
ADDRESSES = st.lists(st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1"]), max_size=3)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), NAMES, ADDRESSES, st.integers(0, 600)),
        st.tuples(st.just("get"), NAMES),
        st.tuples(st.just("wait"), st.floats(0, 400)),
    ),
    max_size=60,
)


@given(OPS, st.integers(0, 4), st.sampled_from([0.0, 30.0, 300.0]))
def test_the_cache_answers_only_the_latest_live_answer_and_stays_bounded(
    ops: list[tuple], max_names: int, max_ttl: float
) -> None:
    cache = NameCache(max_names, max_ttl)
    latest: dict[str, tuple[float, tuple[str, ...]]] = {}  # the model: expiry, addresses
    now = 1000.0
    for op in ops:
        if op[0] == "wait":
            now += op[1]
        elif op[0] == "put":
            _, name, addresses, ttl = op
            cache.put(name, addresses, ttl, now)
            latest[name] = (now + min(ttl, max_ttl), tuple(addresses))
            if ttl > 0 and addresses and max_names and max_ttl:
                assert cache.get(name, now) == tuple(addresses)  # just put: always there
        else:
            got = cache.get(op[1], now)
            if got is not None:
                expires, addresses = latest[op[1]]
                assert got == addresses  # never an older answer
                assert now < expires  # never past its TTL (or max_ttl)
        assert len(cache) <= max_names


def test_the_least_recently_used_name_goes_first() -> None:
    cache = NameCache(max_names=2)
    cache.put("a.test", ["192.0.2.1"], 60, 0.0)
    cache.put("b.test", ["192.0.2.2"], 60, 0.0)
    assert cache.get("a.test", 1.0) == ("192.0.2.1",)  # a is now the more recent
    cache.put("c.test", ["192.0.2.3"], 60, 1.0)
    assert cache.get("b.test", 1.0) is None
    assert cache.get("a.test", 1.0) == ("192.0.2.1",)
    assert cache.get("c.test", 1.0) == ("192.0.2.3",)


def test_a_ttl_over_max_ttl_is_cut_and_an_expired_answer_is_dropped() -> None:
    cache = NameCache(max_names=10, max_ttl=300)
    cache.put("a.test", ["192.0.2.1"], 86_400, 0.0)
    assert cache.get("a.test", 299.9) == ("192.0.2.1",)
    assert cache.get("a.test", 300.0) is None
    assert len(cache) == 0


def test_an_answer_with_no_ttl_or_no_address_replaces_and_is_not_kept() -> None:
    cache = NameCache()
    cache.put("a.test", ["192.0.2.1"], 60, 0.0)
    cache.put("a.test", ["192.0.2.9"], 0, 1.0)  # the hosts file: no TTL
    assert cache.get("a.test", 1.0) is None
    cache.put("b.test", [], 60, 0.0)
    assert cache.get("b.test", 0.0) is None


@pytest.mark.parametrize(("max_names", "max_ttl"), [(-1, 300.0), (10, -1.0)])
def test_negative_bounds_are_refused(max_names: int, max_ttl: float) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        NameCache(max_names, max_ttl)
