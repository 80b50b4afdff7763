"""bench/target.py, as scenario 4 uses it: a b"B" download comes through a send buffer of
fixed size (the kernel's `ss` shows it), a b"D" one through the autotuned buffer, and both
send the bytes asked for."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.target import BLOCK, BOUNDED_SNDBUF
from tests.support.procs import Proc

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
REQUEST = struct.Struct("!cQ")


@pytest.fixture
def target_port(tmp_path: Path) -> Iterator[int]:
    argv = [sys.executable, "-m", "bench.target", "--bind", HOST]
    proc = Proc("bench-target", argv, {"PYTHONPATH": str(ROOT)}, tmp_path)
    try:
        yield int(proc.ready["ports"][HOST])
    finally:
        proc.stop()


def download(port: int, mode: bytes, n: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(REQUEST.pack(mode, n))
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "the target closed before sending what was asked"
        data += chunk
    return sock, data


def send_buffers(port: int) -> dict[int, int]:
    """The target's side of each connection: the peer's port -> the kernel's send buffer
    (`tb` in ss's skmem)."""
    out = subprocess.run(
        ["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = re.findall(r"\S+:\d+\s+\S+:(\d+)\s*\n?\s*skmem:\(r\d+,rb\d+,t\d+,tb(\d+)", out)
    return {int(peer): int(tb) for peer, tb in found}


def test_a_bounded_download_has_a_fixed_send_buffer_and_sends_what_was_asked(
    target_port: int,
) -> None:
    n = 3 * len(BLOCK) + 1000
    bounded, data = download(target_port, b"B", n)
    autotuned, data_d = download(target_port, b"D", n)
    try:
        assert data == data_d == (BLOCK * 4)[:n]
        buffers = send_buffers(target_port)
        assert buffers[bounded.getsockname()[1]] == 2 * BOUNDED_SNDBUF  # SO_SNDBUF, doubled
        assert autotuned.getsockname()[1] in buffers
        # Nothing more comes after the n bytes: the download is exactly as asked.
        bounded.settimeout(0.2)
        with pytest.raises(TimeoutError):
            bounded.recv(1)
    finally:
        bounded.close()
        autotuned.close()
