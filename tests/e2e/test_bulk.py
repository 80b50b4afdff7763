"""100 MB down and 100 MB up through one HTTPS tunnel each, via the relay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import LISTED, Chain, Target
from helpers import curl, file_sha256, relay_bytes
from support.procs import metric
from support.target import BLOCK, pattern_block, pattern_sha256

SIZE = 100 * 10**6
MAX_TIME = 240  # a hard ceiling only, so a stalled transfer fails instead of hanging

pytestmark = pytest.mark.timeout(MAX_TIME + 60)


def tunnels_ok(chain: Chain) -> float:
    assert chain.relay is not None
    return metric(chain.relay.ready["admin"], "fastrelay_streams_total", result="ok")


def test_100mb_down_through_one_tunnel(chain: Chain, target: Target, tmp_path: Path) -> None:
    down0, tunnels0 = relay_bytes(chain, "downstream"), tunnels_ok(chain)
    out = tmp_path / "down.bin"
    result = curl(
        chain,
        target,
        target.https(LISTED, f"/bytes/{SIZE}?seed=7"),
        "-o",
        str(out),
        "-w",
        "%{http_code} %{size_download}",
        max_time=MAX_TIME,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout.decode() == f"200 {SIZE}"
    assert out.stat().st_size == SIZE
    assert file_sha256(out) == pattern_sha256(SIZE, seed=7)
    assert tunnels_ok(chain) == tunnels0 + 1, "the download did not use exactly one tunnel"
    grown = relay_bytes(chain, "downstream") - down0
    assert grown >= SIZE, f"relay downstream bytes grew by {grown} only"


def test_100mb_up_through_one_tunnel(chain: Chain, target: Target, tmp_path: Path) -> None:
    upload = tmp_path / "up.bin"
    block = pattern_block(11)
    full, rest = divmod(SIZE, BLOCK)
    with upload.open("wb") as f:
        for _ in range(full):
            f.write(block)
        f.write(block[:rest])
    up0, tunnels0 = relay_bytes(chain, "upstream"), tunnels_ok(chain)
    result = curl(
        chain,
        target,
        target.https(LISTED, "/sha256"),
        "--data-binary",
        f"@{upload}",
        "-H",
        "Content-Type: application/octet-stream",
        max_time=MAX_TIME,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert json.loads(result.stdout) == {"sha256": pattern_sha256(SIZE, seed=11), "length": SIZE}
    assert tunnels_ok(chain) == tunnels0 + 1, "the upload did not use exactly one tunnel"
    grown = relay_bytes(chain, "upstream") - up0
    assert grown >= SIZE, f"relay upstream bytes grew by {grown} only"
