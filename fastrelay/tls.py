"""TLS contexts: the relay's server side, and the verifying client side."""

from __future__ import annotations

import ssl
from pathlib import Path

from fastrelay.config import ConfigError


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-cert/--tls-key: cannot load {cert} / {key}: {exc}") from None
    return ctx


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verifies the relay with the system store, or only with `ca_file` if given."""
    ctx = ssl.create_default_context()
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--ca-file: cannot load {ca_file}: {exc}") from None
    return ctx
