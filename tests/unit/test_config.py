"""Config loading: CLI > FASTRELAY_* env > TOML > default, parsers, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import config as agent_config
from client_a import config as client_config
from fastrelay import config as cfg
from fastrelay.config import ConfigError, Option, load_options, read_secret_file
from fastrelay.relay import config as relay_config

OPTS = [
    Option("listen", cfg.host_port, ("127.0.0.1", 1), "address"),
    Option("timeout", cfg.positive_float, 10.0, "seconds"),
    Option("allow", cfg.text_value, (), "specs", repeat=True),
    Option("secret", cfg.token_list, (), "tokens", flag=False),
]


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


def test_defaults_include_common_options() -> None:
    v = load_options("t", OPTS, [], {})
    assert v["listen"] == ("127.0.0.1", 1)
    assert v["timeout"] == 10.0
    assert v["allow"] == ()
    assert (v["log_level"], v["log_format"], v["ping_interval"]) == ("info", "text", 20.0)


def test_precedence_cli_over_env_over_toml_over_default(tmp_path: Path) -> None:
    path = toml(tmp_path, 'listen = "1.1.1.1:1"\ntimeout = 3\nlog_level = "error"\n')
    env = {"FASTRELAY_LISTEN": "2.2.2.2:2", "FASTRELAY_TIMEOUT": "4.5"}
    v = load_options("t", OPTS, ["--config", path, "--listen", "3.3.3.3:3"], env)
    assert v["listen"] == ("3.3.3.3", 3)  # CLI
    assert v["timeout"] == 4.5  # env beats TOML
    assert v["log_level"] == "error"  # TOML beats default
    assert v["log_format"] == "text"  # default
    v = load_options("t", OPTS, [], {**env, "FASTRELAY_CONFIG": path})
    assert v["listen"] == ("2.2.2.2", 2)  # env beats TOML found through FASTRELAY_CONFIG
    assert v["log_level"] == "error"


def test_repeatable_options_from_each_source(tmp_path: Path) -> None:
    v = load_options("t", OPTS, ["--allow", "a", "--allow", "b"], {})
    assert v["allow"] == ("a", "b")
    assert load_options("t", OPTS, [], {"FASTRELAY_ALLOW": "a, b,,c"})["allow"] == ("a", "b", "c")
    path = toml(tmp_path, 'allow = ["x", "y"]\n')
    assert load_options("t", OPTS, ["--config", path], {})["allow"] == ("x", "y")
    path = toml(tmp_path, 'allow = "only"\n')
    assert load_options("t", OPTS, ["--config", path], {})["allow"] == ("only",)


def test_toml_kebab_case_keys(tmp_path: Path) -> None:
    path = toml(tmp_path, "ping-interval = 2.5\n")
    assert load_options("t", OPTS, ["--config", path], {})["ping_interval"] == 2.5


def test_unknown_toml_key_names_the_key(tmp_path: Path) -> None:
    path = toml(tmp_path, 'listen = "1.1.1.1:1"\nlisten_adress = "x"\n')
    with pytest.raises(ConfigError, match="unknown key 'listen_adress'"):
        load_options("t", OPTS, ["--config", path], {})


def test_invalid_or_missing_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_options("t", OPTS, ["--config", toml(tmp_path, "listen = \n")], {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_options("t", OPTS, ["--config", str(tmp_path / "nope.toml")], {})


def test_bad_values_name_their_origin(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="FASTRELAY_TIMEOUT: must be a finite number greater than 0"
    ):
        load_options("t", OPTS, [], {"FASTRELAY_TIMEOUT": "0"})
    path = toml(tmp_path, 'listen = "nope"\n')
    with pytest.raises(ConfigError, match=r"c\.toml: listen: expected HOST:PORT"):
        load_options("t", OPTS, ["--config", path], {})
    path = toml(tmp_path, "timeout = [1, 2]\n")
    with pytest.raises(ConfigError, match="timeout: expected a single value"):
        load_options("t", OPTS, ["--config", path], {})


def test_secret_options_come_from_env_or_toml(tmp_path: Path) -> None:
    assert load_options("t", OPTS, [], {"FASTRELAY_SECRET": "a,b"})["secret"] == ("a", "b")
    path = toml(tmp_path, 'secret = "s1"\n')
    assert load_options("t", OPTS, ["--config", path], {})["secret"] == ("s1",)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--listen", "nope"], "--listen"),
        (["--timeout", "-1"], "--timeout"),
        (["--log-level", "loud"], "--log-level"),
        (["--secret", "x"], "--secret"),  # secrets are never flags
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_argparse_errors_exit_2_naming_the_flag(argv, flag, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        load_options("t", OPTS, argv, {})
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


GOOD = [
    (cfg.host_port, "127.0.0.1:80", ("127.0.0.1", 80)),
    (cfg.host_port, "[::1]:443", ("::1", 443)),
    (cfg.host_port, "localhost:0", ("localhost", 0)),
    (cfg.positive_float, "1.5", 1.5),
    (cfg.positive_float, "3", 3.0),
    (cfg.positive_int, "42", 42),
    (cfg.size_bytes, "1048576", 1048576),
    (cfg.size_bytes, "64KiB", 64 * 1024),
    (cfg.size_bytes, "1MiB", 1024 * 1024),
    (cfg.size_bytes, "2mib", 2 * 1024 * 1024),
    (cfg.size_bytes, "16k", 16 * 1024),
    (cfg.size_bytes, "1GiB", 1024**3),
    (cfg.ws_url, "ws://relay:8765", "ws://relay:8765"),
    (cfg.ws_url, "wss://relay.example/", "wss://relay.example"),
    (cfg.choice("a", "b"), "b", "b"),
    (cfg.token_list, " t1 , t2,", ("t1", "t2")),
    (cfg.ip_address, "::1", "::1"),
]
BAD = [
    (cfg.host_port, "127.0.0.1", "HOST:PORT"),
    (cfg.host_port, ":80", "HOST:PORT"),
    (cfg.host_port, "h:", "HOST:PORT"),
    (cfg.host_port, "h:65536", "HOST:PORT"),
    (cfg.host_port, "h:-1", "HOST:PORT"),
    (cfg.positive_float, "abc", "number"),
    (cfg.positive_float, "0", "greater than 0"),
    (cfg.positive_float, "-2", "greater than 0"),
    (cfg.positive_float, "nan", "greater than 0"),
    (cfg.positive_float, "inf", "finite"),
    (cfg.positive_int, "0", "positive"),
    (cfg.positive_int, "-3", "positive"),
    (cfg.positive_int, "1.5", "positive"),
    (cfg.positive_int, "x", "positive"),
    (cfg.size_bytes, "0", "size"),
    (cfg.size_bytes, "KiB", "size"),
    (cfg.size_bytes, "1TiB", "size"),
    (cfg.size_bytes, "1.5MiB", "size"),
    (cfg.size_bytes, "-1", "size"),
    (cfg.size_bytes, "2048MiB", "below 2 GiB"),
    (cfg.ws_url, "http://relay:80", "ws://"),
    (cfg.ws_url, "ws://", "ws://"),
    (cfg.ws_url, "relay:8765", "ws://"),
    (cfg.choice("a", "b"), "c", "one of a, b"),
    (cfg.token_list, "", "no tokens"),
    (cfg.token_list, " , ,", "no tokens"),
    (cfg.ip_address, "1.2.3", "IP address"),
]


@pytest.mark.parametrize(("parse", "text", "expected"), GOOD)
def test_parsers_accept(parse, text, expected) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(("parse", "text", "message"), BAD)
def test_parsers_reject(parse, text, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_file_parsers(tmp_path: Path) -> None:
    f = tmp_path / "f.pem"
    f.write_text("x")
    assert cfg.existing_file(str(f)) == f
    assert cfg.optional_file(str(f)) == f
    assert cfg.optional_file("") is None
    for bad in (str(tmp_path / "missing"), str(tmp_path)):  # absent, and a directory
        with pytest.raises(ValueError, match="no such file"):
            cfg.existing_file(bad)


def test_read_secret_file(tmp_path: Path) -> None:
    assert read_secret_file(None, "--x") == ()
    f = tmp_path / "tokens"
    f.write_text("# comment\n\n  tok-1  \n   # indented comment\ntok-2\n\n")
    assert read_secret_file(f, "--x") == ("tok-1", "tok-2")
    f.write_text("# only a comment\n\n")
    with pytest.raises(ConfigError, match=r"--tokens-file: .* holds no tokens"):
        read_secret_file(f, "--tokens-file")
    with pytest.raises(ConfigError, match="--x: cannot read"):
        read_secret_file(tmp_path / "gone", "--x")


RELAY_ENV = {"FASTRELAY_CLIENT_TOKENS": "c-secret-1,c-secret-2", "FASTRELAY_AGENT_TOKENS": "a-sec"}


def test_relay_load(tmp_path: Path) -> None:
    conf = relay_config.load([], RELAY_ENV)
    assert conf.client_tokens == ("c-secret-1", "c-secret-2")
    assert conf.agent_tokens == ("a-sec",)
    assert conf.listen == ("127.0.0.1", 8765)
    assert conf.max_frame_size == 1024 * 1024
    for secret in ("c-secret-1", "c-secret-2", "a-sec"):
        assert secret not in repr(conf)
    f = tmp_path / "agents"
    f.write_text("a-file-secret\n")
    env = {"FASTRELAY_CLIENT_TOKENS": "c"}
    conf = relay_config.load(["--agent-tokens-file", str(f)], env)
    assert conf.agent_tokens == ("a-file-secret",)
    assert "a-file-secret" not in repr(conf)


@pytest.mark.parametrize("missing", ["FASTRELAY_CLIENT_TOKENS", "FASTRELAY_AGENT_TOKENS"])
def test_relay_requires_both_token_sets(missing: str) -> None:
    env = {k: v for k, v in RELAY_ENV.items() if k != missing}
    with pytest.raises(ConfigError, match=r"no .* tokens"):
        relay_config.load([], env)


def test_relay_tls_cert_and_key_go_together(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("c")
    key.write_text("k")
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key"):
        relay_config.load(["--tls-cert", str(cert)], RELAY_ENV)
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key"):
        relay_config.load(["--tls-key", str(key)], RELAY_ENV)
    conf = relay_config.load(["--tls-cert", str(cert), "--tls-key", str(key)], RELAY_ENV)
    assert (conf.tls_cert, conf.tls_key) == (cert, key)


@pytest.mark.parametrize("flag", ["--client-tokens", "--agent-tokens"])
def test_relay_tokens_are_not_flags(flag: str) -> None:
    with pytest.raises(SystemExit) as exc:
        relay_config.load([flag, "x"], RELAY_ENV)
    assert exc.value.code == 2


@pytest.mark.parametrize("module", [agent_config, client_config], ids=["agent", "client"])
def test_agent_and_client_token_rules(module, tmp_path: Path, capsys) -> None:
    conf = module.load([], {"FASTRELAY_TOKEN": "env-secret"})
    assert conf.token == "env-secret"
    assert "env-secret" not in repr(conf)
    f = tmp_path / "token"
    f.write_text("# the token\nfile-secret\n")
    conf = module.load(["--token-file", str(f)], {})
    assert conf.token == "file-secret"
    assert "file-secret" not in repr(conf)
    with pytest.raises(ConfigError, match="not both"):
        module.load(["--token-file", str(f)], {"FASTRELAY_TOKEN": "env-secret"})
    with pytest.raises(ConfigError, match="no token"):
        module.load([], {})
    with pytest.raises(SystemExit) as exc:
        module.load(["--token", "x"], {"FASTRELAY_TOKEN": "env-secret"})
    assert exc.value.code == 2
    assert "--token" in capsys.readouterr().err


def test_agent_policy_and_client_defaults() -> None:
    conf = agent_config.load(
        ["--allow", "127.0.0.0/8", "--deny", "127.0.0.4/32"], {"FASTRELAY_TOKEN": "t"}
    )
    assert conf.policy.check("127.0.0.2", "127.0.0.2", 80).allowed
    assert not conf.policy.check("127.0.0.4", "127.0.0.4", 80).allowed
    with pytest.raises(ConfigError, match="--allow/--deny"):
        agent_config.load(["--allow", "[::1"], {"FASTRELAY_TOKEN": "t"})
    conf = client_config.load(["--window", "256KiB"], {"FASTRELAY_TOKEN": "t"})
    assert conf.window == 256 * 1024
    assert conf.listen == ("127.0.0.1", 8080)
    assert conf.rules is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-frame-size", "32MiB"], r"--max-frame-size: at most 16777216 bytes"),
        (["--max-connection-buffer", "1MiB"], r"--max-connection-buffer must be at least twice"),
        (
            ["--max-streams-per-connection", "2000", "--max-streams-per-agent", "1000"],
            r"--max-streams-per-agent must be at least --max-streams-per-connection",
        ),
    ],
)
def test_relay_limits_are_checked(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        relay_config.load(argv, RELAY_ENV)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-connections", "70000"], "--max-connections: must be between 1 and 65535"),
        (
            ["--max-streams-per-connection", "0"],
            "--max-streams-per-connection: expected a positive",
        ),
        (["--max-token-share", "0"], "--max-token-share: must be greater than 0 and at most 1"),
        (["--max-token-share", "150%"], "--max-token-share: must be greater than 0 and at most 1"),
        (["--max-token-share", "nan"], "--max-token-share: must be greater than 0 and at most 1"),
        (["--max-token-share", "half"], "expected a fraction such as 0.5 or 50%, got 'half'"),
    ],
)
def test_relay_limit_flags_out_of_range_exit_2_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        relay_config.load(argv, RELAY_ENV)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_relay_limits_reach_the_switch() -> None:
    conf = relay_config.load(
        ["--max-streams-per-connection", "10", "--max-opens-per-agent", "3"], RELAY_ENV
    )
    limits = conf.limits()
    assert (limits.streams_per_connection, limits.opens_per_agent) == (10, 3)
    assert limits.max_message == conf.max_frame_size
    assert limits.connection_buffer == conf.max_connection_buffer == 64 * 1024 * 1024
    assert limits.token_share == 0.5 and limits.token_opens == 1  # 3 x 0.5, never 0
    assert relay_config.load(["--max-token-share", "25%"], RELAY_ENV).limits().token_share == 0.25
    env = {**RELAY_ENV, "FASTRELAY_MAX_TOKEN_SHARE": "1"}
    assert relay_config.load([], env).max_token_share == 1


# Found by fuzz/fuzz_config.py (issue 10): each of these escaped as a traceback, not ConfigError.


def test_toml_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b"\x0b\xc9")
    with pytest.raises(ConfigError, match=r"c\.toml is not valid UTF-8"):
        load_options("t", OPTS, ["--config", str(path)], {})


def test_deeply_nested_toml_is_a_config_error(tmp_path: Path) -> None:
    path = toml(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nests arrays or tables too deeply"):
        load_options("t", OPTS, ["--config", path], {})


@pytest.mark.parametrize("key", ["rules", "ca_file", "token_file", "access_log"])
def test_a_path_too_long_for_the_os_is_a_config_error(tmp_path: Path, key: str) -> None:
    path = toml(tmp_path, f'{key} = "{"a/" * 3000}b"\n')
    with pytest.raises(ConfigError, match=f"{key}: cannot use 'a/a/.*File name too long"):
        client_config.load(["--config", path], {"FASTRELAY_TOKEN": "t"})
    with pytest.raises(SystemExit) as info:  # the flag says so too, with argparse's exit 2
        client_config.load([f"--{key.replace('_', '-')}", "a" * 5000], {"FASTRELAY_TOKEN": "t"})
    assert info.value.code == 2


def test_a_token_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    secret = tmp_path / "tokens"
    secret.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"--x: the file is not valid UTF-8") as info:
        read_secret_file(secret, "--x")
    assert str(secret) not in str(info.value)  # a token option's value is never repeated
    path = toml(tmp_path, f'token_file = "{secret}"\n')
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        client_config.load(["--config", path], {})


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        # Found by fuzz_config: '²'.isdigit() is True, so int() raised its own message.
        ("listen", "127.0.0.1:\u00b2", "expected HOST:PORT"),
        ("window", "\u00b2KiB", "expected a size such as"),
        ("carriers", "\u00b2", "expected a positive whole number"),
        # urlsplit accepted a port no socket takes; the dial would fail much later.
        ("relay", "ws://relay.example:99999", "port out of range 0-65535"),
    ],
)
def test_values_with_non_ascii_digits_or_a_bad_port_name_the_option(
    tmp_path: Path, key: str, value: str, words: str
) -> None:
    path = toml(tmp_path, f'{key} = "{value}"\n')
    with pytest.raises(ConfigError, match=f"{key}: {words}"):
        client_config.load(["--config", path], {"FASTRELAY_TOKEN": "t"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.53", "192.0.2.53:53"),
        ("127.0.0.1:5353", "127.0.0.1:5353"),
        ("2001:db8::53", "[2001:db8::53]:53"),
        ("[2001:DB8::53]:5353", "[2001:db8::53]:5353"),
        ("[::1]", "[::1]:53"),
    ],
)
def test_dns_server_accepts_an_address_with_or_without_a_port(text: str, expected: str) -> None:
    assert cfg.dns_server(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dns.example", "expected IP, IP:PORT or [IPv6]:PORT, got 'dns.example'"),
        ("192.0.2.53:0", "expected a port from 1 to 65535 in '192.0.2.53:0'"),
        ("192.0.2.53:99999", "expected a port from 1 to 65535 in '192.0.2.53:99999'"),
        ("[::1]x", "expected IP, IP:PORT or [IPv6]:PORT, got '[::1]x'"),
        ("[::1", "expected IP, IP:PORT or [IPv6]:PORT, got '[::1'"),
        ("1.2.3.4:\uff15\uff13", "expected a port from 1 to 65535 in '1.2.3.4:\uff15\uff13'"),
    ],
)
def test_dns_server_refuses_a_name_or_a_bad_port(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        cfg.dns_server(text)
    assert str(info.value) == message


def test_agent_resolver_options() -> None:
    env = {"FASTRELAY_TOKEN": "t"}
    conf = agent_config.load([], env)
    assert (conf.resolver, conf.dns_server, conf.dns_cache) == ("cares", (), 10_000)
    conf = agent_config.load(
        ["--dns-server", "127.0.0.1:5353", "--dns-server", "::1", "--dns-cache", "0"], env
    )
    assert conf.dns_server == ("127.0.0.1:5353", "[::1]:53")
    assert conf.dns_cache == 0
    assert agent_config.load(["--resolver", "system"], env).resolver == "system"
    with pytest.raises(ConfigError) as info:
        agent_config.load(["--resolver", "system", "--dns-server", "127.0.0.1"], env)
    assert "--dns-server" in str(info.value) and "--resolver cares" in str(info.value)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--resolver", "bind"], "--resolver"),
        (["--dns-server", "resolver.example"], "--dns-server"),
        (["--dns-cache", "-1"], "--dns-cache"),
        (["--dns-cache", "1000001"], "--dns-cache"),
    ],
)
def test_agent_resolver_flags_out_of_range_exit_2_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        agent_config.load(argv, {"FASTRELAY_TOKEN": "t"})
    assert info.value.code == 2
    assert flag in capsys.readouterr().err
