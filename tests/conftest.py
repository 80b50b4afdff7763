"""Shared fixtures: a TLS test target, and factories for whole chains.

Topology used by the end-to-end tests (all loopback, ephemeral ports):

    curl/chromium -> client_a -> relay -> agent -> target on 127.0.0.2 (listed)
                        \\-------------------------> target on 127.0.0.3 (unlisted, direct)
"""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

sys.path.insert(0, str(Path(__file__).parent))

from support.loops import LOOPS, Runner, runner
from support.procs import ROOT, Chain, Proc

LISTED = "127.0.0.2"
UNLISTED = "127.0.0.3"
DENIED = "127.0.0.4"  # listed, but the agent's egress policy refuses it


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Runner:
    """`run(main)`: the test's coroutine on asyncio's loop, then on uvloop's."""
    return runner(request.param)


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The cyclic collector off for one test: what it would have freed stays
    findable by gc.collect() afterwards (the garbage tests count it)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Target:
    def __init__(self, proc: subprocess.Popen, servers: dict, ca_pem: Path) -> None:
        self.proc = proc
        self.servers = servers
        self.ca_pem = ca_pem

    def port(self, addr: str, kind: str) -> int:
        return int(self.servers[addr][kind])

    def https(self, addr: str, path: str) -> str:
        return f"https://{addr}:{self.port(addr, 'https')}{path}"

    def http(self, addr: str, path: str) -> str:
        return f"http://{addr}:{self.port(addr, 'http')}{path}"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA and a server certificate for the loopback target addresses."""
    out = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert(LISTED, UNLISTED, DENIED, "127.0.0.1", "localhost")
    paths = {"ca": out / "ca.pem", "cert": out / "server.pem", "key": out / "server.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(paths["cert"]), append=True)
    return paths


@pytest.fixture(scope="session")
def target(certs: dict[str, Path]) -> Iterator[Target]:
    argv = [
        sys.executable,
        str(ROOT / "tests/support/target.py"),
        "--cert",
        str(certs["cert"]),
        "--key",
        str(certs["key"]),
    ]
    for addr in (LISTED, UNLISTED, DENIED):
        argv += ["--bind", addr]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        yield Target(proc, ready["servers"], certs["ca"])
    finally:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="session")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.txt"
    path.write_text(f"# hosts that go through the relay\n{LISTED}/32\n{DENIED}/32\n")
    return path


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
def make_chain(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """Factory for a private chain; every process is stopped at teardown,
    and a failing test gets the processes' log tails in its report."""
    chains: list[Chain] = []

    def make() -> Chain:
        chain = Chain(tmp_path_factory.mktemp("chain-logs"))
        chains.append(chain)
        return chain

    yield make
    failed = getattr(request.node, "rep_call", None)
    for chain in chains:
        if failed is not None and failed.failed:
            for proc in chain.procs:
                print(f"--- {proc.name} log ---\n{proc.log_tail()}")
        chain.stop()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, rules_file: Path) -> Iterator[Chain]:
    """The shared healthy chain: one relay, one agent allowed to reach
    loopback except DENIED, one client_a with the rules file."""
    chain = Chain(tmp_path_factory.mktemp("chain-logs"))
    try:
        chain.start_relay("--connect-timeout", "2")
        chain.start_agent("--allow", "127.0.0.0/8", "--deny", f"{DENIED}/32")
        chain.start_client(rules_file)
        yield chain
    finally:
        chain.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def curl_path() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.fail("curl is required (make test installs it)")
    return path


__all__ = ["DENIED", "LISTED", "UNLISTED", "Chain", "Proc", "Target", "curl_path"]
