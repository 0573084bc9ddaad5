#!/usr/bin/env bash
# Installs what kumo-containers (systemd-nspawn container machines) and its
# integration suite (crates/containers/tests/containers.rs) need: nspawn,
# debootstrap for the cached Debian root filesystem, zstd for the tarball,
# and iproute2/iputils for the test's bridge and pings. Idempotent.
set -euo pipefail

APT_PACKAGES=(
  systemd-container       # systemd-nspawn
  debootstrap
  debian-archive-keyring  # what debootstrap checks the mirror's signatures with
  tar
  zstd                    # the cached root filesystem is a .tar.zst
  util-linux              # nsenter, setsid
  iproute2                # the test's bridge
  iputils-ping            # the test pings the containers from the host
)

source "$(dirname "$0")/apt-ensure.sh"
apt_ensure deps-containers "${APT_PACKAGES[@]}"
