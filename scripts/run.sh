#!/usr/bin/env bash
# kumo on embedded defaults: a region on SQLite under .kumo/, a rack serving
# DHCP, DNS, TFTP and HTTP boot on a lab bridge (kumolab0, 10.248.0.0/24),
# and a small lab of QEMU machines (TCG) whose NICs are on that bridge,
# registered with the qemu power driver. Powered on, they network-boot from
# the rack. Ctrl-C stops region, rack and lab machines and removes the bridge.
#   bash scripts/run.sh [number-of-lab-machines]   (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
machines=${1:-2}
root=$PWD/.kumo
export KUMO_DATA_DIR=$root/data KUMO_CONFIG_DIR=$root/config
unset KUMO_PROFILE

source scripts/apt-ensure.sh
apt_ensure run qemu-system-x86 ipxe-qemu ipxe iproute2
cargo build --release -q -p kumo
kumo=$PWD/target/release/kumo

[ -f "$KUMO_DATA_DIR/region.json" ] || "$kumo" init
"$kumo" region serve &
region=$!
rack=
stop() {
  kill "$region" $rack 2>/dev/null || true
  for pid in "$root"/lab/*.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
  ip link del kumolab0 2>/dev/null || true
  for i in $(seq 1 "$machines"); do ip link del "kumotap$i" 2>/dev/null || true; done
}
trap stop EXIT
for _ in $(seq 50); do "$kumo" whoami >/dev/null 2>&1 && break; sleep 0.2; done

# The lab network: a bridge with the rack's address, a tap per machine.
ip link show kumolab0 >/dev/null 2>&1 || ip link add kumolab0 type bridge
ip addr replace 10.248.0.1/24 dev kumolab0
ip link set kumolab0 up
for i in $(seq 1 "$machines"); do
  ip link show "kumotap$i" >/dev/null 2>&1 || ip tuntap add "kumotap$i" mode tap
  ip link set "kumotap$i" master kumolab0 up
done
if ! "$kumo" subnets show 10.248.0.0/24 >/dev/null 2>&1; then
  "$kumo" subnets create 10.248.0.0/24 --gateway 10.248.0.1 --domain lab.kumo >/dev/null
  "$kumo" ipranges create 10.248.0.0/24 reserved 10.248.0.1 10.248.0.9 --comment "rack and gateway" >/dev/null
  "$kumo" ipranges create 10.248.0.0/24 dynamic 10.248.0.100 10.248.0.199 --comment enlistment >/dev/null
  "$kumo" vlans update fabric-0 0 --dhcp on >/dev/null
  "$kumo" domains create lab.kumo >/dev/null
fi
"$kumo" rack serve --interface kumolab0 --name lab-rack --data-dir "$root/rack" &
rack=$!

mkdir -p "$root/lab"
for i in $(seq 1 "$machines"); do
  name=lab-$i
  "$kumo" machines show "$name" >/dev/null 2>&1 && continue
  mac=$(printf '52:54:00:6b:75:%02x' "$i")
  qmp=$root/lab/$name.qmp
  cmd="[\"$(command -v qemu-system-x86_64)\",\"-machine\",\"pc\",\"-accel\",\"tcg\",\"-m\",\"512\",\"-display\",\"none\",\"-nodefaults\",\"-boot\",\"n\",\"-netdev\",\"tap,id=n0,ifname=kumotap$i,script=no,downscript=no\",\"-device\",\"virtio-net-pci,netdev=n0,mac=$mac\",\"-qmp\",\"unix:$qmp,server=on,wait=off\",\"-pidfile\",\"$root/lab/$name.pid\"]"
  "$kumo" machines add --hostname "$name" --mac "$mac" --power-type qemu \
    --power-param "qmp_socket=$qmp" --power-param "command=$cmd" --cores 1 --memory 512 --tag lab >/dev/null
  "$kumo" machines link "$name" --mac "$mac" --subnet 10.248.0.0/24 >/dev/null
done

"$kumo" machines list
cat <<MSG

kumo region: http://127.0.0.1:5240 (data in $KUMO_DATA_DIR)
kumo rack:   DHCP/DNS/TFTP on kumolab0 (10.248.0.1), HTTP boot on :5248
In another shell:
  export KUMO_CONFIG_DIR=$KUMO_CONFIG_DIR
  $kumo machines commission lab-1     # powers the QEMU machine on
  $kumo machines power-state lab-1
  $kumo events --machine lab-1
  dig @10.248.0.1 lab-1.lab.kumo     # the rack's DNS, from IPAM
  curl http://10.248.0.1:5248/metrics
Ctrl-C stops the region, the rack and the lab.
MSG
wait "$region"
