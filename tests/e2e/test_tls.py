"""wss:// between client_a, the relay and the agent: a tunnel works end to end when
the peers trust the relay's CA, and a peer without --ca-file refuses the relay."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import LISTED, Chain, Target
from helpers import curl
from support.procs import CLIENT_CARRIERS, is_ready, metric, wait_until
from support.target import pattern_sha256

SIZE = 2 * 1024 * 1024 + 11


def tls_chain(make_chain, certs: dict[str, Path]) -> Chain:
    chain = make_chain()
    chain.scheme = "wss"
    chain.start_relay("--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]))
    assert chain.relay_url.startswith("wss://127.0.0.1:")
    return chain


def relay_connections(chain: Chain, role: str) -> float:
    assert chain.relay is not None
    return metric(chain.relay.ready["admin"], "fastrelay_connections", role=role)


def test_tunnel_over_wss(
    make_chain, certs: dict[str, Path], target: Target, rules_file: Path, tmp_path: Path
) -> None:
    chain = tls_chain(make_chain, certs)
    ca = ("--ca-file", str(certs["ca"]))
    chain.start_agent("--allow", "127.0.0.0/8", *ca)
    chain.start_client(rules_file, *ca)
    wait_until(
        lambda: relay_connections(chain, "client") == CLIENT_CARRIERS,
        what="client_a's carriers over wss",
    )
    assert relay_connections(chain, "agent") == 1

    hello = curl(chain, target, target.https(LISTED, "/hello"))
    assert hello.returncode == 0, hello.stderr
    assert f"hello from the target at {LISTED}".encode() in hello.stdout

    out = tmp_path / "bytes.bin"
    result = curl(chain, target, target.https(LISTED, f"/bytes/{SIZE}?seed=5"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size == SIZE
    assert hashlib.sha256(out.read_bytes()).hexdigest() == pattern_sha256(SIZE, seed=5)

    plain = curl(chain, target, target.http(LISTED, "/hello"))  # a REQUEST stream over wss too
    assert plain.returncode == 0, plain.stderr
    assert b"hello from the target" in plain.stdout

    assert chain.relay is not None
    assert metric(chain.relay.ready["admin"], "fastrelay_streams_total", result="ok") == 3
    assert "wss://" in chain.relay.log_path.read_text(errors="replace")


def test_peers_without_ca_file_refuse_the_relay(
    make_chain, certs: dict[str, Path], rules_file: Path
) -> None:
    chain = tls_chain(make_chain, certs)
    client = chain.start_client(rules_file, wait=False)  # system trust store only
    agent = chain.start_agent("--allow", "127.0.0.0/8", wait=False)
    # Each has dialled and been turned away by certificate checks a few times...
    for proc in (client, agent):
        wait_until(
            lambda p=proc: (
                metric(p.ready["admin"], "fastrelay_relay_dials_total", result="error") >= 3
            ),
            what=f"{proc.name} retrying the untrusted relay",
        )
        assert metric(proc.ready["admin"], "fastrelay_relay_dials_total", result="ok") == 0
    # ... and never got in.
    assert not is_ready(client.ready["admin"]), "client_a trusted an unknown CA"
    assert not is_ready(agent.ready["admin"]), "the agent trusted an unknown CA"
    assert relay_connections(chain, "client") == 0
    assert relay_connections(chain, "agent") == 0
    for proc in (client, agent):
        assert proc.alive(), f"{proc.name} keeps retrying rather than exiting"
        wait_until(
            lambda p=proc: "certificate" in p.log_tail().lower(),
            timeout=5,
            what=f"{proc.name} logs the certificate failure",
        )
