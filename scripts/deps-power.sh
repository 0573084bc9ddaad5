#!/usr/bin/env bash
# Installs the peer programs the kumo-power integration tests drive.
# Idempotent: safe to run before every `cargo test`.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.cache/venv"

APT_PACKAGES=(
  openipmi          # ipmi_sim (BMC simulator)
  ipmitool          # the ipmi driver's client
  qemu-system-x86   # qemu driver lab machines
  libvirt-clients   # virsh (test:///default driver needs no daemon)
  tcpdump           # wol test captures the magic packet
  iproute2          # ip netns / veth for the wol test
  openssl           # self-signed cert for the redfish test
  python3-venv      # venv for sushy-tools
  python3-pip
)

source "$(dirname "$0")/apt-ensure.sh"
apt_ensure deps-power "${APT_PACKAGES[@]}"

# Debian's python, not a pyenv shim, so the venv survives shell changes.
PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "deps-power: creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/sushy-emulator" ] || ! "$VENV/bin/python" -c 'import sushy_tools, bcrypt' 2>/dev/null; then
  echo "deps-power: pip install sushy-tools bcrypt into $VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet sushy-tools bcrypt
else
  echo "deps-power: sushy-tools already in $VENV"
fi
echo "deps-power: sushy-emulator at $VENV/bin/sushy-emulator ($("$VENV/bin/pip" show sushy-tools 2>/dev/null | sed -n 's/^Version: //p'))"
