// Runs proxy auto-config files for the tests and the PAC benchmark (issue 13 part 1).
//
// One JSON request per stdin line, one JSON answer per stdout line:
//   {"pac": "<javascript>", "hosts": ["a.example", ...], "rounds": 0}
//   -> {"answers": ["PROXY ...", "DIRECT", ...], "helper_calls": {"dnsResolve": 0, ...},
//       "ns_per_call": <mean over rounds x hosts, only when rounds > 0>, "load_ns": <eval time>}
// Each PAC runs in a fresh VM context that defines the standard PAC helper functions; the
// ones that could resolve a name (dnsResolve, isInNet, isResolvable, myIpAddress, ...) only
// count their calls, so a test can assert that the PAC never asks for a DNS lookup.
"use strict";
const vm = require("vm");
const readline = require("readline");

const HELPERS = [
  "dnsResolve", "dnsResolveEx", "isInNet", "isInNetEx", "isResolvable", "isResolvableEx",
  "myIpAddress", "myIpAddressEx", "dnsDomainIs", "localHostOrDomainIs", "isPlainHostName",
  "dnsDomainLevels", "shExpMatch", "weekdayRange", "dateRange", "timeRange", "alert",
];

function run(request) {
  const calls = {};
  const sandbox = {};
  for (const name of HELPERS) {
    calls[name] = 0;
    sandbox[name] = function () { calls[name] += 1; return false; };
  }
  const context = vm.createContext(sandbox);
  const loadStart = process.hrtime.bigint();
  vm.runInContext(request.pac, context, { timeout: 60000 });
  const loadNs = Number(process.hrtime.bigint() - loadStart);
  const find = context.FindProxyForURL;
  const hosts = request.hosts;
  const answers = hosts.map((h) => find("https://" + h + "/", h));
  const out = { answers, helper_calls: calls, load_ns: loadNs };
  const rounds = request.rounds || 0;
  if (rounds > 0 && hosts.length > 0) {
    let sink = 0;
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
