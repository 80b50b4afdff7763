#!/usr/bin/env bash
# Installs the Debian packages the tests drive (real clients and servers),
# only those that are missing. Needs root (or sudo) the first time.
set -euo pipefail

need=()
command -v curl >/dev/null || need+=(curl)
command -v chromium >/dev/null || need+=(chromium)
# prometheus and promtool: tests/e2e/test_prometheus.py checks deploy/prometheus
# and the Grafana dashboard's queries against a real Prometheus
{ command -v promtool && command -v prometheus; } >/dev/null || need+=(prometheus)
# haproxy and redis-server: tests/e2e/test_scaleout.py runs three relays behind a
# real HAProxy (deploy/haproxy/haproxy.cfg) sharing their membership in Redis.
# Debian puts haproxy in /usr/sbin, which is not on every user's PATH.
{ command -v haproxy || [ -x /usr/sbin/haproxy ]; } >/dev/null || need+=(haproxy)
command -v redis-server >/dev/null || need+=(redis-server)
# node: tests/unit/test_pac_file.py and bench/micro/test_pac_bench.py run client_a's PAC file
# in V8, the engine of Chromium's PAC resolver.
{ command -v node || command -v nodejs; } >/dev/null || need+=(nodejs)
# ss: tests/unit/test_bench_target.py reads the bench target's send buffers with it, as
# bench/probe_many.py reads every socket's queues.
command -v ss >/dev/null || need+=(iproute2)
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
