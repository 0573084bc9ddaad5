#!/usr/bin/env bash
# Installs what the rack's end-to-end suite (crates/kumo/tests/rack_e2e.rs)
# drives: Debian's iPXE boot loaders the rack serves, QEMU with its iPXE
# ROMs, the package proxy the rack runs, and the clients on the segment.
# Idempotent.
set -euo pipefail

APT_PACKAGES=(
  ipxe              # undionly.kpxe, snp.efi, ipxe.efi
  ipxe-qemu         # the iPXE ROMs QEMU's NICs boot from
  qemu-system-x86
  isc-dhcp-client   # dhclient
  bind9-dnsutils    # dig
  tftp-hpa
  curl
  dnsmasq-base      # the rogue DHCP server
  apt-cacher-ng     # the rack's package proxy (the rack starts its own; the package's service may stay off)
)

source "$(dirname "$0")/apt-ensure.sh"
apt_ensure deps-rack "${APT_PACKAGES[@]}"
