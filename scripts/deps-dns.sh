#!/usr/bin/env bash
# Installs the real DNS peers the kumo-dns integration tests drive.
# Idempotent: safe to run before every `cargo test`.
set -euo pipefail

APT_PACKAGES=(
  bind9-dnsutils   # dig
  dnsmasq-base     # dnsmasq, the independent upstream for forwarding tests
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "deps-dns: apt-get install ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  install() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; }
  # A fresh machine may have no package lists yet.
  install || { echo "deps-dns: apt-get update"; $SUDO apt-get update && install; }
else
  echo "deps-dns: apt packages already installed: ${APT_PACKAGES[*]}"
fi
