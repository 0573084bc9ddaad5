#!/usr/bin/env bash
# Installs what `kumo images build` (a bootable Debian disk image) and its
# end-to-end suite (crates/kumo/tests/image_e2e.rs) need: debootstrap and
# the disk tools on the build host (GRUB itself comes from the image's own
# grub-pc, run in its chroot), and for the test QEMU, qemu-img and the
# OpenSSH client. Idempotent.
set -euo pipefail

APT_PACKAGES=(
  debootstrap
  debian-archive-keyring  # what debootstrap checks the mirror's signatures with
  fdisk             # sfdisk: the image's MBR partition table
  e2fsprogs         # mkfs.ext4, e2fsck
  util-linux        # losetup, partx, mount
  tar
  zstd              # the cached root filesystem is a .tar.zst; the test unpacks the image
  qemu-system-x86
  qemu-utils        # qemu-img: the test boots a qcow2 overlay over the raw image
  openssh-client    # ssh, ssh-keygen: the test logs in to the booted image
)

source "$(dirname "$0")/apt-ensure.sh"
apt_ensure deps-images "${APT_PACKAGES[@]}"
