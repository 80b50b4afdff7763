"""The proxy auto-config file (PAC) client_a serves at ``GET /proxy.pac`` (issue 13 part 1).

Generated from the compiled rules (:class:`client_a.rules.Rules`): a listed host gets
``PROXY <client_a>``, a ``fallback=direct`` rule's host ``PROXY <client_a>; DIRECT``, and every
other host ``DIRECT``, so unlisted traffic never touches client_a.  It decides exactly as
:meth:`Rules.lookup` does (the most specific rule wins) for the host forms a browser passes to
``FindProxyForURL`` after URL canonicalisation: lowercase names, dotted-quad IPv4, IPv6 with or
without brackets.  (Rules.lookup also reads ``127.1`` or ``0x7f000001`` as addresses; a
browser has rewritten those to ``127.0.0.1`` before the PAC sees them.)

It stays fast at 100,000 rules, with no linear scan:

- exact names and suffixes are keys of two JS objects (``N`` and ``S``, each key with a leading
  dot so that no key can be an ``Object.prototype`` property such as ``constructor`` or
  ``__proto__``); the host's suffixes are walked longest first, one lookup each, and only
  those with at most as many labels as the deepest suffix rule (``D``);
- a CIDR rule matches only an IP literal: the host is tested against an IPv4 or IPv6 literal
  form first, and never resolved (no ``dnsResolve``, no ``isInNet``), so the browser does no
  DNS lookup for the PAC;
- IPv4 networks sit in one object per prefix length (longest first), keyed by the masked
  address as an integer; IPv6 networks likewise, keyed by the hex digits of the masked prefix.

Pure code: rules in, text and bytes out.  :class:`PacServer` caches the body and its ETag per
rules object and answers the HTTP request for both the proxy port and the admin port.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass

from client_a.rules import Fallback, Rule, Rules
from fastrelay.protocol.status import phrase

__all__ = [
    "CONTENT_TYPE",
    "PAC_PATH",
    "PacFile",
    "PacServer",
    "generate",
    "pac_file",
    "proxy_address",
    "v6_key",
]

PAC_PATH = "/proxy.pac"
CONTENT_TYPE = "application/x-ns-proxy-autoconfig"
# Browsers fetch the PAC once and on network changes; a rules reload changes the ETag, and
# a minute keeps a reload's effect prompt for any cache that honours it.
CACHE_CONTROL = "max-age=60, must-revalidate"

_V4_FULL = 0xFFFFFFFF

# The evaluation code after the tables.  ES5 only (PAC engines are old), and no PAC helper:
# nothing here can trigger a DNS lookup.
_CODE = r"""
var OCTET = "(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)";
var IPV4 = new RegExp("^" + OCTET + "\\." + OCTET + "\\." + OCTET + "\\." + OCTET + "$");
var HEX4 = /^[0-9a-f]+$/;
var ZEROS = "0000";
var MAPPED = "00000000000000000000ffff";  // ::ffff:0:0/96, the IPv4-mapped addresses
function v4int(m) {
  return ((+m[1] * 16777216) + (+m[2] << 16) + (+m[3] << 8) + (+m[4])) >>> 0;
}
function byV4(a) {
  for (var i = 0; i < V4.length; i++) {
    var r = V4[i][1][(a & V4[i][0]) >>> 0];
    if (r !== undefined) return R[r];
  }
  return "DIRECT";
}
function hex4(g) {
  return g.length > 0 && g.length < 5 && HEX4.test(g) ? ZEROS.substring(g.length) + g : null;
}
function v6hex(h) {
  var z = h.indexOf("%");
  if (z >= 0) h = h.substring(0, z);
  if (h.indexOf(".") >= 0) {
    var c = h.lastIndexOf(":");
    var m = IPV4.exec(h.substring(c + 1));
    if (!m) return null;
    var a = v4int(m);
    h = h.substring(0, c + 1) + (a >>> 16).toString(16) + ":" + (a & 65535).toString(16);
  }
  var halves = h.split("::");
  if (halves.length > 2) return null;
  var head = halves[0] ? halves[0].split(":") : [];
  var tail = halves.length == 2 && halves[1] ? halves[1].split(":") : [];
  var missing = 8 - head.length - tail.length;
  if (halves.length == 2 ? missing < 1 : missing != 0) return null;
  var out = "", g, i;
  for (i = 0; i < head.length; i++) {
    if ((g = hex4(head[i])) === null) return null;
    out += g;
  }
  for (i = 0; i < missing; i++) out += ZEROS;
  for (i = 0; i < tail.length; i++) {
    if ((g = hex4(tail[i])) === null) return null;
    out += g;
  }
  return out;
}
// NIBBLE[b][c]: hex digit c with only its top b bits kept, for prefixes not on a digit boundary.
var NIBBLE = [null, {}, {}, {}];
for (var nb = 1; nb < 4; nb++) {
  for (var nv = 0; nv < 16; nv++) {
    NIBBLE[nb][nv.toString(16)] = (nv & (15 << (4 - nb)) & 15).toString(16);
  }
}
function byV6(x) {
  for (var i = 0; i < V6.length; i++) {
    var p = V6[i][0], n = p >> 2, b = p & 3;
    var key = b ? x.substring(0, n) + NIBBLE[b][x.charAt(n)] : x.substring(0, n);
    var r = V6[i][1][key];
    if (r !== undefined) return R[r];
  }
  return "DIRECT";
}
function FindProxyForURL(url, host) {
  var h = host.toLowerCase();
  if (h.charAt(0) == "[" && h.charAt(h.length - 1) == "]") h = h.substring(1, h.length - 1);
  else if (h.charAt(h.length - 1) == ".") h = h.substring(0, h.length - 1);
  var last = h.charCodeAt(h.length - 1);
  var m = last >= 48 && last <= 57 ? IPV4.exec(h) : null;  // an IPv4 literal ends in a digit
  if (m) return byV4(v4int(m));
  if (h.indexOf(":") >= 0) {
    var x = v6hex(h);
    if (x !== null) {
      if (x.substring(0, 24) != MAPPED) return byV6(x);
      return byV4(parseInt(x.substring(24), 16));
    }
  }
  var r = N["." + h];
  if (r !== undefined) return R[r];
  // Suffixes longest first, but only those of at most D labels: no rule has more.
  var start = -1, j = h.length;
  for (var k = 0; k < D && j > 0; k++) {
    j = h.lastIndexOf(".", j - 1);
    if (j < 0) break;
    start = j;
  }
  for (var i = start; i >= 0; i = h.indexOf(".", i + 1)) {
    r = S[h.substring(i)];
    if (r !== undefined) return R[r];
  }
  return "DIRECT";
}
"""


def v6_key(network: int, prefixlen: int) -> str:
    """The key of an IPv6 network in its prefix-length object: the hex digits of the prefix,
    the last one masked (``2001:db8::/30`` is ``2001db8`` with its last digit & 0xc)."""
    digits = f"{network:032x}"
    full, bits = divmod(prefixlen, 4)
    key = digits[:full]
    if bits:
        key += format(int(digits[full], 16) & (0xF << (4 - bits)) & 0xF, "x")
    return key


def _code(rule: Rule) -> int:
    return 1 if rule.fallback is Fallback.DIRECT else 0


def _table(entries: Mapping[str, int]) -> str:
    return json.dumps(entries, separators=(",", ":"))


def generate(rules: Rules, proxy: str) -> str:
    """The PAC JavaScript for ``rules``, sending listed hosts to ``proxy`` (``host:port``)."""
    answers = [f"PROXY {proxy}", f"PROXY {proxy}; DIRECT"]
    names = {"." + name: _code(rule) for name, rule in rules.names.items()}
    suffixes = {"." + name: _code(rule) for name, rule in rules.suffixes.items()}
    v4 = ",".join(
        f"[{mask},{_table({str(net): _code(r) for net, r in nets.items()})}]"
        for _, mask, nets in rules.v4
    )
    v6 = ",".join(
        f"[{p},{_table({v6_key(net, p): _code(r) for net, r in nets.items()})}]"
        for p, _, nets in rules.v6
    )
    return (
        f"// fastrelay client_a proxy auto-config: {len(rules)} rules "
        f"({len(names)} names, {len(suffixes)} suffixes, "
        f"{sum(len(n) for *_, n in rules.v4)} IPv4 and {sum(len(n) for *_, n in rules.v6)} IPv6 "
        "networks).\n// Listed hosts go to client_a, fallback=direct ones may go direct if it "
        "is down,\n// everything else goes direct. Generated; do not edit.\n"
        f"var R = {json.dumps(answers)};\n"
        f"var N = {_table(names)};\n"
        f"var S = {_table(suffixes)};\n"
        f"var D = {rules.max_depth};\n"
        f"var V4 = [{v4}];\n"
        f"var V6 = [{v6}];\n" + _CODE
    )


@dataclass(frozen=True, slots=True)
class PacFile:
    body: bytes
    etag: str  # strong: a quoted hash of the body


def pac_file(rules: Rules, proxy: str) -> PacFile:
    body = generate(rules, proxy).encode("ascii")
    return PacFile(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def proxy_address(listen: tuple[str, int], local_host: str | None) -> str:
    """``host:port`` for the PAC's PROXY: the address client_a listens on, IPv6 bracketed.
    A wildcard listen address (``0.0.0.0``, ``::``) is no address to dial: then the local
    address of the connection the PAC was fetched on, which the browser did reach."""
    host, port = listen
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        ip = None
    if ip is not None and ip.is_unspecified and local_host:
        host = local_host
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            ip = None
    if ip is not None and ip.version == 6:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return f"{ip.ipv4_mapped}:{port}"
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 13.1.2: ``*`` or any listed tag (weak comparison: W/ is ignored)."""
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


class PacServer:
    """Answers ``GET``/``HEAD /proxy.pac``; the body and ETag are built once per rules object
    (and proxy address), so a rules reload regenerates them on the next request."""

    def __init__(self, listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.listen = listen
        self._rules: Rules | None = None
        self._files: dict[str, PacFile] = {}
        self.served = 0
        self.not_modified = 0

    def file(self, rules: Rules, local_host: str | None = None) -> PacFile:
        if rules is not self._rules:
            self._rules, self._files = rules, {}
        proxy = proxy_address(self.listen, local_host)
        pac = self._files.get(proxy)
        if pac is None:
            pac = self._files[proxy] = pac_file(rules, proxy)
        return pac

    def respond(
        self,
        rules: Rules,
        method: str,
        headers: Mapping[str, str],
        local_host: str | None = None,
    ) -> bytes:
        """The whole HTTP/1.1 response (``Connection: close``) to a request for the PAC;
        ``headers`` has lowercase names."""
        if method not in ("GET", "HEAD"):
            return render(405, [("Allow", "GET, HEAD")], b"only GET or HEAD /proxy.pac\n")
        pac = self.file(rules, local_host)
        fields = [("Cache-Control", CACHE_CONTROL), ("ETag", pac.etag)]
        if_none_match = headers.get("if-none-match")
        if if_none_match is not None and _etag_matches(if_none_match, pac.etag):
            self.not_modified += 1
            return render(304, fields, b"", head_only=True)
        self.served += 1
        fields.insert(0, ("Content-Type", CONTENT_TYPE))
        return render(200, fields, pac.body, head_only=method == "HEAD")


def render(
    status: int,
    fields: list[tuple[str, str]],
    body: bytes,
    head_only: bool = False,
) -> bytes:
    """A response with Content-Length (that of ``body`` unless a 304) and Connection: close;
    with ``head_only`` the body is left out (HEAD, 304)."""
    lines = [f"HTTP/1.1 {status} {phrase(status)}"]
    lines += [f"{name}: {value}" for name, value in fields]
    if status != 304:
        if not any(name == "Content-Type" for name, _ in fields):
            lines.append("Content-Type: text/plain; charset=utf-8")
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body
