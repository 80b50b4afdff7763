"""client_a's --header-timeout and --max-connections (issue 10, item 5):
defaults, the three sources, and bad values named by their origin."""

from __future__ import annotations

from pathlib import Path

import pytest

from client_a import config as client_config
from fastrelay.config import ConfigError

ENV = {"FASTRELAY_TOKEN": "t"}


def test_defaults_suit_a_browser() -> None:
    conf = client_config.load([], ENV)
    assert conf.header_timeout == 10.0
    assert conf.max_connections == 4096


def test_flags() -> None:
    conf = client_config.load(["--header-timeout", "0.5", "--max-connections", "5"], ENV)
    assert conf.header_timeout == 0.5
    assert conf.max_connections == 5


def test_environment_and_toml(tmp_path: Path) -> None:
    env = {**ENV, "FASTRELAY_HEADER_TIMEOUT": "3", "FASTRELAY_MAX_CONNECTIONS": "100"}
    conf = client_config.load([], env)
    assert (conf.header_timeout, conf.max_connections) == (3.0, 100)
    toml = tmp_path / "client.toml"
    toml.write_text("header-timeout = 2.5\nmax_connections = 7\n")
    conf = client_config.load(["--config", str(toml)], ENV)
    assert (conf.header_timeout, conf.max_connections) == (2.5, 7)
    # the flag wins over the environment
    conf = client_config.load(["--max-connections", "9"], env)
    assert conf.max_connections == 9


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_bad_header_timeout(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        client_config.load([f"--header-timeout={value}"], ENV)
    assert exc.value.code == 2
    assert "--header-timeout" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="FASTRELAY_HEADER_TIMEOUT"):
        client_config.load([], {**ENV, "FASTRELAY_HEADER_TIMEOUT": value})


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "many", "2000000"])
def test_bad_max_connections(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        client_config.load([f"--max-connections={value}"], ENV)
    assert exc.value.code == 2
    assert "--max-connections" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="FASTRELAY_MAX_CONNECTIONS"):
        client_config.load([], {**ENV, "FASTRELAY_MAX_CONNECTIONS": value})
