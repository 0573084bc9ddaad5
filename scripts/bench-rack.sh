#!/usr/bin/env bash
# Rack benchmarks: kumo's DHCP, DNS and TFTP servers against their usual
# peers on this machine, each in its own process in a network namespace,
# the load tool in another, one table per protocol:
#   DHCP  perfdhcp → kumo, Kea 2.2 (memfile), dnsmasq
#   DNS   dnsperf  → kumo, BIND 9, dnsmasq
#   TFTP  tftp-hpa, curl, atftp → kumo, tftpd-hpa
#   HTTP  curl → `kumo rack serve` /boot/, nginx (scripts/bench-http.sh)
# Needs root (network namespaces). Arguments pick benchmarks, e.g.
#   bash scripts/bench-rack.sh dns tftp
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2           # ip netns, veth, ss
  kea-admin          # perfdhcp
  kea-dhcp4-server   # Kea
  dnsperf
  bind9              # named
  dnsmasq            # DHCP and DNS peer (-base is the binary; the full package is what users install)
  tftpd-hpa          # in.tftpd
  tftp-hpa           # tftp client (no options)
  atftp              # client with blksize and windowsize
  curl               # tftp:// with blksize
)
source scripts/apt-ensure.sh
apt_ensure bench-rack "${APT_PACKAGES[@]}"

# Installing may have started the peers as system services; each benchmark
# starts its own copies in a namespace, so stop and disable those (with
# systemd if it runs, else through their init scripts, else by pid file).
for svc in bind9 named kea-dhcp4-server dnsmasq tftpd-hpa; do
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  elif [ -x "/etc/init.d/$svc" ]; then
    "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    command -v update-rc.d >/dev/null && update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
done
for pidfile in /run/named/named.pid /run/kea/kea-dhcp4.kea-dhcp4.pid /run/dnsmasq/dnsmasq.pid /run/tftpd-hpa.pid; do
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
done

cargo build --release -p kumo-bench
bench=${CARGO_TARGET_DIR:-target}/release/kumo-bench
(($#)) || set -- dhcp dns tftp http
for b in "$@"; do
  printf '\n== %s\n' "$b"
  if [ "$b" = http ]; then
    bash scripts/bench-http.sh
  else
    "$bench" "$b"
  fi
done
