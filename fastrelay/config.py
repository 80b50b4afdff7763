"""One validated config object per program, from CLI flags, FASTRELAY_*
environment variables and an optional TOML file (in that order of precedence).

Each program declares its options as a list of `Option`s; `load_options`
returns a plain dict that the program turns into its frozen config dataclass.
Every bad value or unknown TOML key raises `ConfigError` naming the option, and
the CLI turns that into exit status 2. Secrets (tokens) are never accepted as
flags, so they never show up in `ps`; they come from the environment or a file.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastrelay.protocol.namecache import MAX_NAMES

ENV_PREFIX = "FASTRELAY_"


class ConfigError(Exception):
    """A config problem, phrased for the operator; exit status 2."""


@dataclass(frozen=True)
class Option:
    name: str  # snake_case; --kebab-case flag, FASTRELAY_UPPER env, TOML key either way
    parse: Callable[[str], Any]
    default: Any
    help: str
    repeat: bool = False  # flag may repeat; env is comma-separated; TOML takes a list
    flag: bool = True  # False for secrets: environment or TOML only
    hidden: bool = False  # internal: accepted, but not shown by --help
    metavar: str | None = None  # what --help shows for the value; guessed from `parse`

    @property
    def secret(self) -> bool:
        """A token option (the tokens or their file): its value is never echoed.
        Limits that only name tokens (--max-connections-per-token) are not."""
        return not self.flag or self.name.endswith(("token_file", "tokens_file"))

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.name.upper()


# --- value parsers: each raises ValueError with a message that finishes "NAME: ..." ---


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' and other digits int() refuses."""
    return text.isascii() and text.isdigit()


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not _digits(port) or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):  # also refuses nan
        raise ValueError(f"must be a finite number greater than 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """'0.5' or '50%': a share greater than 0 and at most 1."""
    raw = str(text).strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw) / (100 if percent else 1)
    except ValueError:
        raise ValueError(f"expected a fraction such as 0.5 or 50%, got {text!r}") from None
    if not 0 < value <= 1:  # also refuses nan
        raise ValueError(f"must be greater than 0 and at most 1 (100%), got {text!r}")
    return value


def positive_int(text: str) -> int:
    if not _digits(str(text).strip()) or int(text) <= 0:
        raise ValueError(f"expected a positive whole number, got {text!r}")
    return int(text)


def boolean(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def count_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = positive_int(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


_SIZE_UNITS = {
    "": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
}


def size_bytes(text: str) -> int:
    """'1048576', '64KiB', '1MiB' -> bytes."""
    raw = str(text).strip().lower()
    digits = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(digits) :]
    if not _digits(digits) or unit not in _SIZE_UNITS or int(digits) == 0:
        raise ValueError(f"expected a size such as 1048576, 64KiB or 1MiB, got {text!r}")
    value = int(digits) * _SIZE_UNITS[unit]
    if value > 2**31 - 1:
        raise ValueError(f"must be below 2 GiB, got {text!r}")
    return value


def ws_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"expected ws://HOST:PORT or wss://HOST:PORT, got {text!r}")
    try:
        _ = parts.port  # urlsplit checks the port (0-65535) only when asked for it
    except ValueError:
        raise ValueError(f"port out of range 0-65535 in {text!r}") from None
    return text.rstrip("/")


def redis_url(text: str) -> str:
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected redis://HOST:PORT[/DB], rediss://... or unix:///PATH")
    return text


def name_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    if not names:
        raise ValueError("no names given")
    return names


def _checked(text: str, check: Callable[[], bool]) -> bool:
    """A path test that reports an unusable path (too long, ...) as ValueError, not OSError."""
    try:
        return check()
    except OSError as exc:
        raise ValueError(f"cannot use {text[:100]!r}: {exc.strerror}") from None


def existing_file(text: str) -> Path:
    path = Path(text)
    if not _checked(text, path.is_file):
        raise ValueError(f"no such file: {text!r}")
    return path


def optional_file(text: str) -> Path | None:
    return existing_file(text) if text else None


def optional_output(text: str) -> Path | None:
    """A file to append to ('-' is stderr); its directory must exist."""
    if not text:
        return None
    path = Path(text)
    if text != "-" and not _checked(text, path.parent.is_dir):
        raise ValueError(f"directory {str(path.parent)!r} does not exist")
    if _checked(text, path.is_dir):
        raise ValueError(f"{text!r} is a directory")
    return path


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return text

    parse.allowed = allowed  # type: ignore[attr-defined]  # for --help
    return parse


def token_list(text: str) -> tuple[str, ...]:
    tokens = tuple(t.strip() for t in str(text).split(",") if t.strip())
    if not tokens:
        raise ValueError("no tokens given")
    return tokens


def text_value(text: str) -> str:
    return str(text)


def ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"expected an IP address, got {text!r}") from None


# Per-stream window that client_a and the agent grant. 4 MiB measured +35 % on
# one bulk tunnel over 1 MiB (bench: 383 -> 506-569 MB/s down); 8 MiB added only
# ~10 % more while doubling what a stalled reader can pin (docs/OPERATIONS.md).
ENDPOINT_WINDOW = 4 * 1024 * 1024
# How far a stream's window grows when its sender runs out of credit while the
# receiver keeps up (a long path). One tunnel across a 50 ms delay line
# (python -m bench --only long_path): 72 MB/s at a fixed 4 MiB, 258 growing to
# 16 MiB, 372 growing to 32 MiB (0.62 of the chain's own 0 ms rate); the relay's
# per-connection budget (3/4 of 64 MiB) bounds it anyway.
ENDPOINT_MAX_WINDOW = 32 * 1024 * 1024


def dns_server(text: str) -> str:
    """'192.0.2.53', '192.0.2.53:5353', '2001:db8::53', '[2001:db8::53]:5353' -> c-ares'
    form (IP:PORT, [IPv6]:PORT). An address, not a name: the resolver cannot look up itself."""
    raw = str(text).strip()
    host, port = raw, "53"
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected IP, IP:PORT or [IPv6]:PORT, got {text!r}")
        port = rest[1:] or "53"
    elif raw.count(":") == 1:
        host, _, port = raw.partition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected IP, IP:PORT or [IPv6]:PORT, got {text!r}") from None
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"expected a port from 1 to 65535 in {text!r}")
    return f"{ip}:{int(port)}" if ip.version == 4 else f"[{ip}]:{int(port)}"


def name_count(text: str) -> int:
    raw = str(text).strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 1_000_000:
        raise ValueError(f"expected a whole number from 0 to 1000000, got {text!r}")
    return int(raw)


def resolver_options() -> list[Option]:
    """How client_a (direct route) and the agent look up names (fastrelay/resolver.py)."""
    return [
        Option(
            "resolver",
            choice("cares", "system"),
            "cares",
            "name look-ups: cares (c-ares: no thread pool, a TTL cache) or system (getaddrinfo)",
        ),
        Option(
            "dns_server",
            dns_server,
            (),
            "DNS server for --resolver cares; repeat for more (default: /etc/resolv.conf)",
            repeat=True,
            metavar="IP[:PORT]",
        ),
        Option(
            "dns_cache",
            name_count,
            MAX_NAMES,
            "names --resolver cares keeps for their TTL (at most 300 s); 0: none",
            metavar="N",
        ),
    ]


def check_resolver(values: dict[str, Any]) -> None:
    """--dns-server goes with c-ares only; the servers become a tuple."""
    if values["dns_server"] and values["resolver"] == "system":
        raise ConfigError(
            "--dns-server: the system resolver reads /etc/resolv.conf; it needs --resolver cares"
        )
    values["dns_server"] = tuple(values["dns_server"])


def carrier_options() -> list[Option]:
    """The options of every program that dials the relay (client_a and the agent)."""
    return [
        Option("relay", ws_url, "ws://127.0.0.1:8765", "relay URL, ws:// or wss://"),
        Option("ca_file", optional_file, None, "CA bundle to verify a wss:// relay"),
        Option("token", text_value, "", "bearer token for the relay", flag=False),
        Option("token_file", optional_file, None, "file holding the bearer token"),
        Option("window", size_bytes, ENDPOINT_WINDOW, "per-stream receive window"),
        Option(
            "max_window",
            size_bytes,
            ENDPOINT_MAX_WINDOW,
            "largest a stream's receive window grows to on a long path",
        ),
        Option("max_frame_size", size_bytes, 1024 * 1024, "largest WebSocket frame accepted"),
        Option("reconnect_max", positive_float, 10.0, "longest pause between relay redials"),
    ]


def load_token(values: dict[str, Any]) -> str:
    """FASTRELAY_TOKEN or --token-file, popped from the loaded values."""
    token = values.pop("token")
    from_file = read_secret_file(values.pop("token_file"), "--token-file")
    if token and from_file:
        raise ConfigError("give the token once: FASTRELAY_TOKEN or --token-file, not both")
    token = token or (from_file[0] if from_file else "")
    if not token:
        raise ConfigError("no token: set FASTRELAY_TOKEN or --token-file")
    return token


COMMON_OPTIONS = [
    Option("log_level", choice("debug", "info", "warning", "error"), "info", "log verbosity"),
    Option("log_format", choice("text", "json"), "text", "log line format"),
    Option("ping_interval", positive_float, 20.0, "WebSocket ping interval, seconds"),
    Option(
        "access_log", optional_output, None, "append one line per finished tunnel (- for stderr)"
    ),
]


def load_options(
    program: str,
    options: Sequence[Option],
    argv: Sequence[str],
    environ: Mapping[str, str] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """Merge CLI > environment > TOML > defaults, validating every value."""
    environ = os.environ if environ is None else environ
    options = [*options, *COMMON_OPTIONS]
    args = _parse_cli(program, options, argv, description)
    config_path = args.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    file_values = _read_toml(config_path, options) if config_path else {}
    values: dict[str, Any] = {}
    for opt in options:
        if opt.name in args:
            raw, origin = args[opt.name], opt.flag_name
        elif opt.env_name in environ:
            raw, origin = environ[opt.env_name], opt.env_name
            if opt.repeat:
                raw = [item for item in raw.split(",") if item.strip()]
        elif opt.name in file_values:
            raw, origin = file_values[opt.name], f"{config_path}: {opt.name}"
        else:
            values[opt.name] = opt.default
            continue
        values[opt.name] = _convert(opt, raw, origin)
    return values


def _convert(opt: Option, raw: Any, origin: str) -> Any:
    try:
        if opt.repeat:
            items = raw if isinstance(raw, list) else [raw]
            return tuple(opt.parse(str(item).strip()) for item in items)
        if isinstance(raw, list):
            raise ValueError("expected a single value, not a list")
        return opt.parse(str(raw))
    except ValueError as exc:
        raise ConfigError(f"{origin}: {_scrub(opt, raw, str(exc))}") from None


def _scrub(opt: Option, raw: Any, message: str) -> str:
    """An error about a token option, without the value it was given."""
    if not opt.secret:
        return message
    for item in raw if isinstance(raw, list) else [raw]:
        text = str(item)
        if text.strip():
            message = message.replace(repr(text), "<hidden>").replace(text, "<hidden>")
    return message


def _refuse_secret_flags(
    parser: argparse.ArgumentParser, options: Sequence[Option], argv: Sequence[str]
) -> None:
    """`--token X` names its option and the way to give it, never X."""
    secret_flags = {opt.flag_name: opt for opt in options if not opt.flag}
    for arg in argv:
        if arg == "--":
            break
        opt = secret_flags.get(arg.split("=", 1)[0])
        if opt is not None:
            parser.error(
                f"{opt.flag_name}: tokens are never flags (they would show in ps): "
                f"set {opt.env_name} or use {opt.flag_name}-file"
            )


# --- how --help shows values: as a person writes them ---

_METAVARS: dict[Callable[[str], Any], str] = {
    host_port: "HOST:PORT",
    positive_float: "SECONDS",
    positive_int: "N",
    boolean: "true|false",
    size_bytes: "SIZE",
    ws_url: "URL",
    redis_url: "URL",
    name_list: "ID,ID,...",
    existing_file: "FILE",
    optional_file: "FILE",
    optional_output: "FILE",
    ip_address: "IP",
}


def metavar(opt: Option) -> str:
    if opt.metavar:
        return opt.metavar
    if opt.parse in _METAVARS:
        return _METAVARS[opt.parse]
    if getattr(opt.parse, "__qualname__", "").startswith("count_in"):
        return "N"
    allowed = getattr(opt.parse, "allowed", None)
    if allowed:
        return "|".join(allowed)
    return "VALUE"


def format_size(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def format_default(opt: Option) -> str | None:
    """The default as one would type it, or None when there is none to show."""
    value = opt.default
    if value is None or value == "" or value == () or value == []:
        return None
    if opt.parse is host_port and isinstance(value, tuple):
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if opt.parse is size_bytes and isinstance(value, int):
        return format_size(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def help_epilog(options: Sequence[Option]) -> str:
    """Every environment variable the program reads, tokens included."""
    lines = ["environment (a flag beats its variable; the variable beats --config):"]
    width = max(len(opt.env_name) for opt in options)
    width = max(width, len(ENV_PREFIX + "CONFIG"))
    lines.append(f"  {ENV_PREFIX + 'CONFIG':<{width}}  same as --config")
    for opt in options:
        if opt.hidden:
            continue
        what = opt.flag_name if opt.flag else f"{opt.help} (never a flag)"
        if opt.repeat and opt.flag:
            what += ", comma-separated"
        lines.append(f"  {opt.env_name:<{width}}  {what}")
    return "\n".join(lines)


def _parse_cli(
    program: str, options: Sequence[Option], argv: Sequence[str], description: str | None = None
) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog=f"fastrelay {program}",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
        description=description,
        epilog=help_epilog(options),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _refuse_secret_flags(parser, options, argv)
    parser.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file")
    for opt in options:
        if not opt.flag:
            continue
        default = format_default(opt)
        help_text = f"{opt.help} (env {opt.env_name}"
        help_text += f"; default {default})" if default is not None else ")"
        parser.add_argument(
            opt.flag_name,
            dest=opt.name,
            action="append" if opt.repeat else "store",
            help=argparse.SUPPRESS if opt.hidden else help_text.replace("%", "%%"),
            metavar=metavar(opt),
            type=_argparse_type(opt),
        )
    args, extra = parser.parse_known_args(list(argv))
    if extra:
        # Only the unknown options are named: a stray value may be a secret.
        unknown = [arg.split("=", 1)[0] for arg in extra if arg.startswith("-")]
        if unknown:
            parser.error(f"unknown option {', '.join(unknown)}")
        parser.error(f"{len(extra)} unexpected argument(s) without an option")
    return vars(args)


def _argparse_type(opt: Option) -> Callable[[str], str]:
    # Validate at parse time so argparse names the flag and exits 2; the raw
    # string is kept and converted again in `_convert` with everything else.
    def check(text: str) -> str:
        try:
            opt.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(_scrub(opt, text, str(exc))) from None
        return text

    return check


def _read_toml(path: str, options: Sequence[Option]) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the whole file first
        raise ConfigError(f"--config: {path} is not valid UTF-8: {exc.reason}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(f"--config: {path} nests arrays or tables too deeply") from None
    known = {opt.name for opt in options}
    values: dict[str, Any] = {}
    for key, value in doc.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{path}: unknown key {key!r}")
        values[name] = value
    return values


def read_secret_file(path: Path | None, option: str) -> tuple[str, ...]:
    """Tokens from a file: one per line, '#' comments allowed."""
    if path is None:
        return ()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:  # the path is not repeated: it was given to a token option
        raise ConfigError(f"{option}: cannot read the file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{option}: the file is not valid UTF-8: {exc.reason}") from None
    tokens = tuple(ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#"))
    if not tokens:
        raise ConfigError(f"{option}: the file holds no tokens")
    return tokens


def mask(secret: str) -> str:
    """What a token looks like in logs: never the token itself."""
    return f"<{len(secret)} chars>"
