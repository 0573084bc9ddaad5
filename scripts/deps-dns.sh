#!/usr/bin/env bash
# Installs the real DNS peers the kumo-dns integration tests drive.
# Idempotent: safe to run before every `cargo test`.
set -euo pipefail

APT_PACKAGES=(
  bind9-dnsutils   # dig
  dnsmasq-base     # dnsmasq, the independent upstream for forwarding tests
  clang            # rebuilds the XDP object to check the committed one (scripts/build-xdp.sh)
  iproute2         # ip: the XDP test brings up its namespace's loopback
)

source "$(dirname "$0")/apt-ensure.sh"
apt_ensure deps-dns "${APT_PACKAGES[@]}"
