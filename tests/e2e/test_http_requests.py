"""Plain-HTTP (absolute-form) requests through client_a, by the relay and direct.

The listed host (LISTED) goes through the relay, the unlisted one (UNLISTED)
goes direct; either way the body arrives byte-exact, the browser is told
`Connection: close`, and only the relay route moves the relay's byte counters.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import LISTED, UNLISTED, Chain, Target
from helpers import curl, relay_bytes, response_head
from support.procs import metric
from support.target import pattern_bytes

ROUTES = [pytest.param(LISTED, "relay", id="relay"), pytest.param(UNLISTED, "direct", id="direct")]
GET_SIZE = 3 * 10**6 + 17
POST_SIZE = 2 * 10**6 + 5


class Counters:
    """Relay byte counters and client_a's ok count for one route, before and after."""

    def __init__(self, chain: Chain, route: str) -> None:
        self.chain = chain
        self.route = route
        self.before = self.read()

    def read(self) -> tuple[float, float, float]:
        admin = self.chain.clients[0].ready["admin"]
        ok = metric(admin, "fastrelay_client_requests_total", route=self.route, result="ok")
        return relay_bytes(self.chain, "upstream"), relay_bytes(self.chain, "downstream"), ok

    def check(self, min_up: int, min_down: int) -> None:
        up0, down0, ok0 = self.before
        up, down, ok = self.read()
        assert ok == ok0 + 1, f"client_a counted {ok - ok0} ok {self.route} requests, not 1"
        if self.route == "relay":
            assert up >= up0 + min_up, f"relay upstream bytes grew by {up - up0} only"
            assert down >= down0 + min_down, f"relay downstream bytes grew by {down - down0} only"
        else:
            assert (up, down) == (up0, down0), "a direct request moved the relay's byte counters"


def fetch(chain: Chain, target: Target, url: str, tmp_path: Path, *args: str):
    """curl through client_a; returns (status, headers, body) of the browser-side response."""
    head_file = tmp_path / "head.txt"
    result = curl(chain, target, url, "-D", str(head_file), *args)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    status, headers = response_head(head_file.read_bytes())
    return status, headers, result.stdout


def upload_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(POST_SIZE)
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize(("host", "route"), ROUTES)
def test_get_bytes_exact(chain: Chain, target: Target, tmp_path: Path, host: str, route: str):
    counters = Counters(chain, route)
    url = target.http(host, f"/bytes/{GET_SIZE}?seed=5")
    status, headers, body = fetch(chain, target, url, tmp_path)
    assert status == 200
    assert headers.get("connection", "").lower() == "close", headers
    assert int(headers["content-length"]) == GET_SIZE
    assert len(body) == GET_SIZE
    assert body == pattern_bytes(GET_SIZE, seed=5)
    counters.check(min_up=1, min_down=GET_SIZE)


@pytest.mark.parametrize(("host", "route"), ROUTES)
def test_post_content_length(chain: Chain, target: Target, tmp_path: Path, host: str, route: str):
    counters = Counters(chain, route)
    path, data = upload_file(tmp_path)
    status, headers, body = fetch(
        chain, target, target.http(host, "/sha256"), tmp_path, "--data-binary", f"@{path}"
    )
    assert status == 200
    assert headers.get("connection", "").lower() == "close", headers
    assert json.loads(body) == {"sha256": hashlib.sha256(data).hexdigest(), "length": POST_SIZE}
    counters.check(min_up=POST_SIZE, min_down=len(body))


@pytest.mark.parametrize(("host", "route"), ROUTES)
def test_post_chunked(chain: Chain, target: Target, tmp_path: Path, host: str, route: str):
    counters = Counters(chain, route)
    path, data = upload_file(tmp_path)
    status, headers, body = fetch(
        chain,
        target,
        target.http(host, "/sha256"),
        tmp_path,
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        f"@{path}",
    )
    assert status == 200
    assert headers.get("connection", "").lower() == "close", headers
    assert json.loads(body) == {"sha256": hashlib.sha256(data).hexdigest(), "length": POST_SIZE}
    counters.check(min_up=POST_SIZE, min_down=len(body))


@pytest.mark.parametrize(("host", "route"), ROUTES)
def test_small_get_sees_connection_close(chain: Chain, target: Target, host: str, route: str):
    counters = Counters(chain, route)
    result = curl(chain, target, target.http(host, "/hello"), "-i")
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    status, headers = response_head(head + b"\r\n\r\n")
    assert status == 200
    assert headers.get("connection", "").lower() == "close", headers
    assert f"hello from the target at {host}".encode() in body
    counters.check(min_up=1, min_down=len(body))
