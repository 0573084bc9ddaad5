#!/usr/bin/env bash
# Installs the TFTP clients the kumo-tftp integration tests drive.
# Idempotent: safe to run before every `cargo test`.
set -euo pipefail

APT_PACKAGES=(
  tftp-hpa   # tftp: the reference RFC 1350 client (no options)
  atftp      # atftp: blksize, tsize, timeout and windowsize options
  curl       # curl tftp://: blksize and tsize
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "deps-tftp: apt-get install ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  install() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; }
  # A fresh machine may have no package lists yet.
  install || { echo "deps-tftp: apt-get update"; $SUDO apt-get update && install; }
else
  echo "deps-tftp: apt packages already installed: ${APT_PACKAGES[*]}"
fi
