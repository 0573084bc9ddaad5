#!/usr/bin/env bash
# Installs the real DHCP clients (and the rogue server) the kumo-dhcp
# integration tests drive.
# Idempotent: safe to run before every `cargo test`.
set -euo pipefail

APT_PACKAGES=(
  isc-dhcp-client   # dhclient
  udhcpc            # busybox udhcpc
  dnsmasq-base      # the rogue server in tests/rogue.rs (the binary only, no system service)
  iproute2          # ip netns / veth pairs
)

source "$(dirname "$0")/apt-ensure.sh"
apt_ensure deps-dhcp "${APT_PACKAGES[@]}"
