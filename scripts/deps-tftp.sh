#!/usr/bin/env bash
# Installs the TFTP clients the kumo-tftp integration tests drive.
# Idempotent: safe to run before every `cargo test`.
set -euo pipefail

APT_PACKAGES=(
  tftp-hpa   # tftp: the reference RFC 1350 client (no options)
  atftp      # atftp: blksize, tsize, timeout and windowsize options
  curl       # curl tftp://: blksize and tsize
)

source "$(dirname "$0")/apt-ensure.sh"
apt_ensure deps-tftp "${APT_PACKAGES[@]}"
