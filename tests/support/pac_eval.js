// Runs proxy auto-config files for the tests and the PAC benchmark (issue 13 part 1).
//
// One JSON request per stdin line, one JSON answer per stdout line:
//   {"pac": "<javascript>", "hosts": ["a.example", ...], "rounds": 0}
//   -> {"answers": ["PROXY ...", "DIRECT", ...], "helper_calls": {"dnsResolve": 0, ...},
//       "ns_per_call": <mean over rounds x hosts after rounds / 4 warm-up rounds, only when
//       rounds > 0>, "load_ns": <time to evaluate the file>}
// Each PAC runs in a scope of its own that defines the standard PAC helper functions; they
// only count their calls (dnsResolve, isInNet, isResolvable, myIpAddress could resolve a
// name), so a test can assert that the PAC never asks for a DNS lookup.
"use strict";
const readline = require("readline");

const HELPERS = [
  "dnsResolve", "dnsResolveEx", "isInNet", "isInNetEx", "isResolvable", "isResolvableEx",
  "myIpAddress", "myIpAddressEx", "dnsDomainIs", "localHostOrDomainIs", "isPlainHostName",
  "dnsDomainLevels", "shExpMatch", "weekdayRange", "dateRange", "timeRange", "alert",
];

function run(request) {
  const calls = {};
  const helpers = HELPERS.map((name) => {
    calls[name] = 0;
    return function () { calls[name] += 1; return false; };
  });
  // The PAC's top-level declarations become locals of one function whose parameters are the
  // helpers: each PAC gets a scope of its own, as in a browser's PAC engine, without a vm
  // context (whose intercepted global object makes every global read several times slower
  // than in Chromium's own PAC isolate).
  const loadStart = process.hrtime.bigint();
  const factory = new Function(...HELPERS, request.pac + "\nreturn FindProxyForURL;");
  const find = factory(...helpers);
  const loadNs = Number(process.hrtime.bigint() - loadStart);
  const hosts = request.hosts;
  const answers = hosts.map((h) => find("https://" + h + "/", h));
  const out = { answers, helper_calls: calls, load_ns: loadNs };
  const rounds = request.rounds || 0;
  if (rounds > 0 && hosts.length > 0) {
    let sink = 0;
    // Warm-up: V8 optimises FindProxyForURL after enough calls; time the steady state.
    for (let r = 0; r < Math.ceil(rounds / 4); r++) {
      for (let i = 0; i < hosts.length; i++) sink += find("", hosts[i]).length;
    }
    const start = process.hrtime.bigint();
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < hosts.length; i++) sink += find("", hosts[i]).length;
    }
    const elapsed = Number(process.hrtime.bigint() - start);
    out.ns_per_call = elapsed / (rounds * hosts.length);
    out.sink = sink;
  }
  return out;
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  let out;
  try {
    out = run(JSON.parse(line));
  } catch (err) {
    out = { error: String(err && err.stack || err) };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
});
