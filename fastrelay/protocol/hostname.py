"""Hostnames normalised once, before any decision: IDNA (UTS #46) mapping, one trailing dot.

The egress policy and the dial must judge and resolve the same name. The resolver's IDNA
codec maps look-alikes (``rt-loop.test`` with a fullwidth r, U+FF52) to the ASCII name they mean,
so a policy that compared the raw string could be bypassed; and names the codec cannot encode
(an empty label, a label over 63 characters, over 253 in all) raised ``UnicodeError`` out of
the resolver. :func:`normalize_hostname` gives the one name both use, or :class:`HostnameError`.

- IP literals: ``[v6]`` is unbracketed, IPv6 is lowercased (a ``%zone`` is kept as is).
- IPv4 literals are read the way browsers' URL parsers read them (the WHATWG host parser,
  :func:`parse_ipv4`): ``127.1``, ``0x7f.1``, ``0x7f000001``, ``2130706433``, ``0177.0.0.1`` and
  ``127.000.000.001`` are all ``127.0.0.1``, and ``0`` is ``0.0.0.0``. A name whose last label
  is a number (:func:`ends_in_a_number`) but which is no IPv4 address (``1.2.3.256``,
  ``foo.1``) is a :class:`HostnameError`, as it is a failure for a browser.
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

__all__ = [
    "MAX_LABEL_LENGTH",
    "MAX_NAME_LENGTH",
    "HostnameError",
    "canonical_ipv4",
    "ends_in_a_number",
    "format_ipv4",
    "normalize_hostname",
    "parse_ipv4",
]

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
_ASCII_LABEL_RE = re.compile(r"[a-z0-9_-]+")
_DEC_DIGITS = frozenset("0123456789")
_OCT_DIGITS = frozenset("01234567")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_MAX_SIGNIFICANT_DIGITS = 12  # more than any number below 2**32 needs in base 8, 10 or 16
_TOO_BIG = 1 << 40  # stands for any number with more significant digits: out of every range


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


def _ipv4_number(part: str) -> int | None:
    """The WHATWG IPv4 number parser: decimal, ``0x``/``0X`` hex or ``0`` octal; None on failure."""
    if not part:
        return None
    radix, digits = 10, _DEC_DIGITS
    if len(part) >= 2 and part[0] == "0":
        if part[1] in "xX":
            part, radix, digits = part[2:], 16, _HEX_DIGITS
        else:
            part, radix, digits = part[1:], 8, _OCT_DIGITS
        if not part:
            return 0  # "0x" and "0" followed by nothing
    # An explicit check: int() would also take '_', spaces, '+' and non-ASCII digits.
    if not digits.issuperset(part):
        return None
    significant = part.lstrip("0")
    if len(significant) > _MAX_SIGNIFICANT_DIGITS:
        return _TOO_BIG  # int() of a huge string is slow (and capped): it is out of range anyway
    return int(significant or "0", radix)


def ends_in_a_number(host: str) -> bool:
    """The WHATWG "ends in a number" checker: is the last label (after one trailing dot is
    ignored) all decimal digits, or an IPv4 number (``0x1f``)? Such a host must be an IPv4
    address or nothing."""
    parts = host.split(".")
    if parts[-1] == "":
        if len(parts) == 1:
            return False
        parts.pop()
    last = parts[-1]
    if last and last.isascii() and last.isdigit():
        return True
    return _ipv4_number(last) is not None


def parse_ipv4(host: str) -> int | None:
    """The WHATWG IPv4 parser (https://url.spec.whatwg.org/#concept-ipv4-parser), pure.

    1 to 4 dot-separated numbers, each decimal, ``0x`` hex or ``0``-led octal; every number but
    the last is one byte, the last fills the remaining bytes (``127.1`` is ``127.0.0.1``); one
    trailing dot is allowed. Returns the address as an int, or None for "not an IPv4 literal"
    (anything out of range or malformed); never raises for any ``str``.
    """
    # Fast path: a strict dotted quad (no leading zeros) means the same to inet_pton.
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, host))
    except (OSError, ValueError):
        pass
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4:
        return None
    numbers = []
    for part in parts:
        number = _ipv4_number(part)
        if number is None:
            return None
        numbers.append(number)
    last = numbers.pop()
    if any(n > 255 for n in numbers) or last >= 256 ** (4 - len(numbers)):
        return None
    for i, number in enumerate(numbers):
        last += number << (8 * (3 - i))
    return last


def format_ipv4(value: int) -> str:
    """The dotted quad of a 32-bit address."""
    return socket.inet_ntop(socket.AF_INET, value.to_bytes(4))


def canonical_ipv4(host: str) -> str | None:
    """The dotted quad ``host`` means if it is an IPv4 literal in any spelling, else None."""
    if not host[:1].isdigit():  # every IPv4 number starts with a digit: a fast no for names
        return None
    try:  # a strict dotted quad is already canonical (see normalize_hostname)
        socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        pass
    else:
        return host
    value = parse_ipv4(host)
    return None if value is None else format_ipv4(value)


def normalize_hostname(host: str) -> str:
    """The normalised form of ``host``; :class:`HostnameError` if it has none."""
    # Fast path, the agent's usual open: a strict dotted quad (what inet_pton takes: four
    # decimal bytes, no leading zeros) is already its own normal form, as the full path
    # below would give it (UTS #46 leaves it alone, parse_ipv4 and format_ipv4 round-trip
    # it); the IDNA mapping would cost several microseconds per call.
    try:
        socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        pass
    else:
        return host
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
    if ends_in_a_number(mapped):  # before the trailing dot goes: "1.2.3.4.." is no address
        value = parse_ipv4(mapped)
        if value is None:
            raise HostnameError(
                f"invalid host {_shown(host)}: ends in a number but is not an IPv4 address"
            )
        return format_ipv4(value)
    if mapped.endswith("."):
        mapped = mapped[:-1]
    if not mapped:
        raise HostnameError(f"invalid host {_shown(host)}: empty name")
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
