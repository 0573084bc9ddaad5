#!/usr/bin/env bash
# Installs what `kumo images build-ephemeral` and the enlistment suite
# (crates/kumo/tests/metal_e2e.rs) need: the tools that unpack Debian's
# kernel and busybox packages and pack the initramfs, and QEMU with its
# iPXE ROMs and qemu-img. The kernel and busybox .debs themselves are
# fetched by `apt-get download` at build time (cached under .cache/), so
# the package lists must exist. Idempotent.
set -euo pipefail

APT_PACKAGES=(
  kmod              # depmod: modules.dep for the kernel's modules
  binutils          # strip: a debug kumo binary shrinks several times over
  gzip
  qemu-system-x86
  qemu-utils        # qemu-img: the test machine's disk
  ipxe-qemu         # the iPXE ROMs QEMU's NICs boot from
  curl
)

source "$(dirname "$0")/apt-ensure.sh"
apt_ensure deps-agent "${APT_PACKAGES[@]}"
# apt-get download needs package lists; a fresh machine may have none.
if ! apt-cache show linux-image-amd64 busybox-static >/dev/null 2>&1; then
  echo "deps-agent: apt-get update"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
fi
