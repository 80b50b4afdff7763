"""Hostnames normalised once, before any decision: IDNA (UTS #46) mapping, one trailing dot.

The egress policy and the dial must judge and resolve the same name. The resolver's IDNA
codec maps look-alikes (``rt-loop.test`` with a fullwidth r, U+FF52) to the ASCII name they mean,
so a policy that compared the raw string could be bypassed; and names the codec cannot encode
(an empty label, a label over 63 characters, over 253 in all) raised ``UnicodeError`` out of
the resolver. :func:`normalize_hostname` gives the one name both use, or :class:`HostnameError`.

- IP literals: ``[v6]`` is unbracketed, IPv6 is lowercased (a ``%zone`` is kept as is), an IPv4
  dotted quad is kept as is.
- One trailing dot is dropped (``example.com.`` is ``example.com``); a second is an empty label.
- The whole name is mapped with UTS #46 (non-transitional): case folding, fullwidth forms and
  the fullwidth and ideographic full stops (U+FF0E, U+3002, U+FF61) become ASCII.
- A label that is still not ASCII is encoded to its ``xn--`` A-label (IDNA 2008). ASCII labels
  may hold only ``a-z 0-9 - _`` (the underscore of ``_dmarc`` and the like is kept).

The result is lowercase ASCII and normalising it again changes nothing.
"""

from __future__ import annotations

import re
import socket

import idna

__all__ = ["MAX_LABEL_LENGTH", "MAX_NAME_LENGTH", "HostnameError", "normalize_hostname"]

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
_ASCII_LABEL_RE = re.compile(r"[a-z0-9_-]+")
_IPV4_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


class HostnameError(ValueError):
    """A host cannot be normalised (so cannot be looked up); the message says why."""


def _shown(host: str) -> str:
    """The host for an error message: repr, cut to a readable length."""
    return repr(host) if len(host) <= 80 else repr(host[:60]) + f"... ({len(host)} characters)"


def _ipv6(host: str) -> str | None:
    address, percent, zone = host.partition("%")
    try:
        socket.inet_pton(socket.AF_INET6, address)
    except (OSError, ValueError):
        return None
    return address.lower() + percent + zone  # zone (interface) names are case-sensitive


def normalize_hostname(host: str) -> str:
    """The normalised form of ``host``; :class:`HostnameError` if it has none."""
    if host[:1] == "[" and host[-1:] == "]":
        inner = _ipv6(host[1:-1])
        if inner is None:
            raise HostnameError(f"invalid host {_shown(host)}: not an IPv6 address in brackets")
        return inner
    if ":" in host:
        inner = _ipv6(host)
        if inner is None:
            raise HostnameError(f"invalid host {_shown(host)}: ':' outside an IPv6 address")
        return inner
    try:
        # Mapping first: it may turn fullwidth and ideographic full stops into '.'.
        mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise HostnameError(f"invalid host {_shown(host)}: {exc}") from None
    if mapped.endswith("."):
        mapped = mapped[:-1]
    if not mapped:
        raise HostnameError(f"invalid host {_shown(host)}: empty name")
    if _IPV4_RE.fullmatch(mapped):
        return mapped
    labels = []
    for label in mapped.split("."):
        if not label:
            raise HostnameError(f"invalid host {_shown(host)}: empty label")
        if label.isascii():
            if not _ASCII_LABEL_RE.fullmatch(label):
                raise HostnameError(
                    f"invalid host {_shown(host)}: a label may hold only a-z, 0-9, '-' and '_'"
                )
        else:
            try:
                label = idna.alabel(label).decode("ascii")
            except (idna.IDNAError, UnicodeError, ValueError) as exc:
                raise HostnameError(f"invalid host {_shown(host)}: {exc}") from None
        if len(label) > MAX_LABEL_LENGTH:
            raise HostnameError(
                f"invalid host {_shown(host)}: a label is longer than {MAX_LABEL_LENGTH} characters"
            )
        labels.append(label)
    name = ".".join(labels)
    if len(name) > MAX_NAME_LENGTH:
        raise HostnameError(
            f"invalid host {_shown(host)}: longer than {MAX_NAME_LENGTH} characters"
        )
    return name
