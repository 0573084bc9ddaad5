#!/usr/bin/env bash
# Installs the real DHCP clients the kumo-dhcp integration tests drive.
# Idempotent: safe to run before every `cargo test`.
set -euo pipefail

APT_PACKAGES=(
  isc-dhcp-client   # dhclient
  udhcpc            # busybox udhcpc
  iproute2          # ip netns / veth pairs
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "deps-dhcp: apt-get install ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  install() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; }
  # A fresh machine may have no package lists yet.
  install || { echo "deps-dhcp: apt-get update"; $SUDO apt-get update && install; }
else
  echo "deps-dhcp: apt packages already installed: ${APT_PACKAGES[*]}"
fi
