"""Agent pools end to end: hosts routed to the network where they live.

Two agents in two pools, each allowed to reach only its own target address:

    curl -> client_a -> relay -> agent (pool default, egress 127.0.0.2 only) -> target 127.0.0.2
                              \\-> agent (pool corp, egress 127.0.0.4 only)   -> target 127.0.0.4

The rules file lists 127.0.0.2 in the default pool and 127.0.0.4 with `@corp`.
Each host reaching its own pool's agent shows three ways: the page says which
target answered, each agent's dial counter counts exactly its pool's hosts,
and an agent that got the other pool's host would refuse it (403, its egress
policy). Killing the corp agent makes corp hosts answer 503 `no agent in pool
'corp'`, from the relay's routing decision (the reason word, not a timeout's),
while the default pool keeps working. The same holds with `relay --workers 2`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import DENIED, LISTED, Chain, Target, curl_path
from helpers import curl, curl_via, proxy_status
from support.cluster import RELAYS, Cluster, require_tools
from support.procs import AGENT_TOKEN, Proc, agent_argv, fastrelay, metric, wait_until

CORP = DENIED  # 127.0.0.4: a second target address, routed to the corp pool here
REQUESTS = 6


@pytest.fixture
def pool_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.txt"
    path.write_text(f"{LISTED}/32\n[pool corp]\n{CORP}/32\n")
    return path


def dials(agent: Proc, result: str = "ok") -> float:
    return metric(agent.ready["admin"], "fastrelay_agent_dials_total", result=result)


def get(chain: Chain, target: Target, addr: str, scheme: str = "https") -> bytes:
    url = target.https(addr, "/hello") if scheme == "https" else target.http(addr, "/hello")
    result = curl(chain, target, url)
    assert result.returncode == 0, result.stderr
    return bytes(result.stdout)


def pools_chain(make_chain, rules: Path, *relay_args: str) -> tuple[Chain, Proc, Proc]:
    chain = make_chain()
    # A long --connect-timeout: an open that waited for an agent would end in a 504
    # open_timeout, so the 503 below can only be the routing decision.
    chain.start_relay("--connect-timeout", "30", *relay_args)
    default = chain.start_agent("--allow", f"{LISTED}/32")
    corp = chain.start_agent("--pool", "corp", "--allow", f"{CORP}/32")
    return chain, default, corp


def check_routing(chain: Chain, target: Target, default: Proc, corp: Proc) -> None:
    for i in range(REQUESTS):
        scheme = "https" if i % 2 else "http"
        assert f"hello from the target at {LISTED}".encode() in get(chain, target, LISTED, scheme)
        assert f"hello from the target at {CORP}".encode() in get(chain, target, CORP, scheme)
    assert dials(default) == REQUESTS and dials(corp) == REQUESTS
    # Neither agent was ever asked for the other pool's host (its policy would refuse it).
    assert dials(default, "denied") == 0 and dials(corp, "denied") == 0


def check_corp_gone(chain: Chain, target: Target, default: Proc, corp: Proc) -> None:
    corp.kill()
    relay_admin = chain.relay.ready["admin"]  # type: ignore[union-attr]
    wait_until(
        lambda: metric(relay_admin, "fastrelay_pool_agents", pool="corp") == 0,
        what="the relay saw the corp agent go",
    )
    assert proxy_status(chain, target, target.https(CORP, "/hello")) == 503
    page = curl(chain, target, target.http(CORP, "/hello"), "-w", "\n%{http_code}")
    assert page.stdout.endswith(b"\n503"), page.stdout
    assert b"no agent in pool 'corp' (no_agent_in_pool)" in page.stdout
    # The default pool is untouched.
    before = dials(default)
    assert f"hello from the target at {LISTED}".encode() in get(chain, target, LISTED)
    assert dials(default) == before + 1
    assert metric(relay_admin, "fastrelay_pool_streams_total", pool="corp", result="no_agent") >= 2


def test_each_host_goes_to_its_pool_and_a_dead_pool_answers_503(
    make_chain, target: Target, pool_rules: Path
) -> None:
    chain, default, corp = pools_chain(make_chain, pool_rules)
    chain.start_client(pool_rules)
    relay_admin = chain.relay.ready["admin"]  # type: ignore[union-attr]
    assert metric(relay_admin, "fastrelay_pool_agents", pool="corp") == 1
    assert metric(relay_admin, "fastrelay_pool_agents", pool="default") == 1
    check_routing(chain, target, default, corp)
    ok = metric(relay_admin, "fastrelay_pool_streams_total", pool="corp", result="ok")
    assert ok == REQUESTS
    assert "pool corp" in corp.log_tail()  # the relay's HELLO confirmed the pool
    check_corp_gone(chain, target, default, corp)


def test_pools_with_relay_workers(make_chain, target: Target, pool_rules: Path) -> None:
    chain, default, corp = pools_chain(make_chain, pool_rules, "--workers", "2")
    for agent in (default, corp):  # each agent meshes with both workers
        wait_until(
            lambda agent=agent: metric(agent.ready["admin"], "fastrelay_relay_connected") == 2,
            what="the agent holds a connection to every worker",
        )
    chain.start_client(pool_rules, "--carriers", "16")
    relay = chain.relay
    assert relay is not None
    for admin in relay.ready["worker_admins"]:  # a dial that landed twice is closed soon
        for pool in ("default", "corp"):
            wait_until(
                lambda admin=admin, pool=pool: (
                    metric(admin, "fastrelay_pool_agents", pool=pool) == 1
                ),
                what=f"one {pool} agent on each worker",
            )
    check_routing(chain, target, default, corp)
    check_corp_gone(chain, target, default, corp)


@pytest.mark.parametrize("how", ["flag", "toml"])
def test_a_bad_pool_name_is_a_config_error(tmp_path: Path, how: str) -> None:
    args = ["--relay", "ws://127.0.0.1:9", "--admin", "127.0.0.1:0"]
    if how == "flag":
        args += ["--pool", "Corp!"]
    else:
        config = tmp_path / "agent.toml"
        config.write_text('pool = "Corp!"\n')
        args += ["--config", str(config)]
    env = {**os.environ, "FASTRELAY_TOKEN": AGENT_TOKEN}
    result = subprocess.run(fastrelay("agent", *args), env=env, capture_output=True, timeout=30)
    assert result.returncode == 2
    assert b"pool name 'Corp!' is not 1-64 characters" in result.stderr


def test_agents_beyond_the_pool_limit_are_refused_clearly(make_chain) -> None:
    chain = make_chain()
    relay = chain.start_relay("--max-pools", "2")
    chain.start_agent("--pool", "corp")  # with "default", two
    lab = chain.start_agent("--pool", "lab", wait=False)
    admin = relay.ready["admin"]
    wait_until(
        lambda: metric(admin, "fastrelay_limit_hits_total", limit="pools") >= 1,
        what="the third pool refused",
    )
    wait_until(lambda: "at most 2 agent pools" in lab.log_tail(), what="the agent says why")
    assert metric(admin, "fastrelay_pool_agents", pool="lab") == 0
    assert metric(admin, "fastrelay_pool_agents", pool="corp") == 1


@pytest.mark.parametrize("pool", ["Corp", "-x", "a" * 65, "corp.example"])
def test_an_upgrade_with_a_malformed_pool_gets_400(make_chain, pool: str) -> None:
    chain = make_chain()
    relay = chain.start_relay()
    argv = [curl_path(), "-sS", "-i", "--max-time", "5"]
    for header in (
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        f"Authorization: Bearer {AGENT_TOKEN}",
        f"X-Fastrelay-Pool: {pool}",
    ):
        argv += ["-H", header]
    result = subprocess.run(
        [*argv, f"http://{relay.ready['listen']}/v1/agent"], capture_output=True, timeout=30
    )
    assert result.stdout.startswith(b"HTTP/1.1 400"), result.stdout[:300]
    assert f"X-Fastrelay-Pool: pool name {pool!r} is not".encode() in result.stdout
    assert metric(relay.ready["admin"], "fastrelay_connections", role="agent") == 0


@pytest.mark.timeout(150)
def test_pools_across_a_relay_cluster(
    tmp_path_factory: pytest.TempPathFactory, target: Target, pool_rules: Path
) -> None:
    """Three relays (Redis membership) behind HAProxy: both agents mesh with
    every relay, and each relay routes by pool."""
    require_tools()
    cluster = Cluster(tmp_path_factory.mktemp("cluster-logs"), tmp_path_factory.mktemp("data"))
    try:
        cluster.start_backends()
        agents = {}
        for pool, allow in (("default", LISTED), ("corp", CORP)):
            argv = agent_argv(cluster.url, "--pool", pool, "--allow", f"{allow}/32")
            agents[pool] = proc = Proc(
                f"agent-{pool}", argv, {"FASTRELAY_TOKEN": AGENT_TOKEN}, cluster.log_dir
            )
            cluster.procs.append(proc)
            wait_until(
                lambda proc=proc: (
                    metric(proc.ready["admin"], "fastrelay_relay_connected") == RELAYS
                ),
                timeout=20,
                what=f"the {pool} agent holds every relay",
            )
        for slot in cluster.relays:  # a dial that landed twice is closed soon
            for pool in agents:
                wait_until(
                    lambda slot=slot, pool=pool: (
                        slot.metric("fastrelay_pool_agents", pool=pool) == 1
                    ),
                    what=f"one {pool} agent at {slot.instance_id}",
                )
        client = cluster.start_client(pool_rules, "--carriers", "6")
        proxy = f"http://{client.ready['listen']}"
        for _ in range(REQUESTS):
            for addr in (LISTED, CORP):
                result = curl_via(proxy, target, target.https(addr, "/hello"))
                assert f"hello from the target at {addr}".encode() in result.stdout, result.stderr
        assert dials(agents["default"]) == REQUESTS and dials(agents["corp"]) == REQUESTS
        served = [
            slot.metric("fastrelay_pool_streams_total", pool="corp", result="ok")
            for slot in cluster.relays
        ]
        assert sum(served) == REQUESTS
        agents["corp"].kill()
        for slot in cluster.relays:
            wait_until(
                lambda slot=slot: slot.metric("fastrelay_pool_agents", pool="corp") == 0,
                what=f"{slot.instance_id} saw the corp agent go",
            )
        for _ in range(3):
            page = curl_via(proxy, target, target.http(CORP, "/hello"), "-w", "\n%{http_code}")
            assert page.stdout.endswith(b"\n503"), page.stdout
            assert b"no agent in pool 'corp' (no_agent_in_pool)" in page.stdout
            result = curl_via(proxy, target, target.https(LISTED, "/hello"))
            assert f"hello from the target at {LISTED}".encode() in result.stdout, result.stderr
    except BaseException:
        print(cluster.log_tails())
        raise
    finally:
        cluster.stop()


def test_a_fallback_direct_rule_dials_direct_when_its_pool_has_no_agent(
    make_chain, target: Target, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text(f"{LISTED}/32 @corp\n{CORP}/32 @corp fallback=direct\n")
    chain = make_chain()
    chain.start_relay("--connect-timeout", "30")
    default = chain.start_agent("--allow", "127.0.0.0/8")  # pool default: never corp's
    client = chain.start_client(rules)
    # Fail closed (the default): the 503 naming the pool.
    page = curl(chain, target, target.http(LISTED, "/hello"), "-w", "\n%{http_code}")
    assert page.stdout.endswith(b"\n503") and b"no agent in pool 'corp'" in page.stdout
    # Fail open: client_a dials the host itself, and counts it.
    assert f"hello from the target at {CORP}".encode() in get(chain, target, CORP)
    admin = client.ready["admin"]
    assert metric(admin, "fastrelay_client_requests_total", route="fallback", result="ok") == 1
    assert dials(default) == 0 and dials(default, "denied") == 0
