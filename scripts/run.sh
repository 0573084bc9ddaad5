#!/usr/bin/env bash
# kumo on embedded defaults: a region on SQLite under .kumo/, and a small lab
# of QEMU machines (TCG, diskless) registered with the qemu power driver.
# Ctrl-C stops the region and the lab machines.
#   bash scripts/run.sh [number-of-lab-machines]   (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
machines=${1:-2}
root=$PWD/.kumo
export KUMO_DATA_DIR=$root/data KUMO_CONFIG_DIR=$root/config
unset KUMO_PROFILE

if ! command -v qemu-system-x86_64 >/dev/null; then
  echo "run: installing qemu-system-x86 for the lab machines"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
fi
cargo build --release -q -p kumo
kumo=$PWD/target/release/kumo

[ -f "$KUMO_DATA_DIR/region.json" ] || "$kumo" init
"$kumo" region serve &
region=$!
stop() {
  kill "$region" 2>/dev/null || true
  for pid in "$root"/lab/*.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
}
trap stop EXIT
for _ in $(seq 50); do "$kumo" whoami >/dev/null 2>&1 && break; sleep 0.2; done

mkdir -p "$root/lab"
for i in $(seq 1 "$machines"); do
  name=lab-$i
  "$kumo" machines show "$name" >/dev/null 2>&1 && continue
  mac=$(printf '52:54:00:6b:75:%02x' "$i")
  qmp=$root/lab/$name.qmp
  cmd="[\"$(command -v qemu-system-x86_64)\",\"-machine\",\"pc\",\"-accel\",\"tcg\",\"-m\",\"256\",\"-display\",\"none\",\"-nodefaults\",\"-qmp\",\"unix:$qmp,server=on,wait=off\",\"-pidfile\",\"$root/lab/$name.pid\"]"
  "$kumo" machines add --hostname "$name" --mac "$mac" --power-type qemu \
    --power-param "qmp_socket=$qmp" --power-param "command=$cmd" --cores 1 --memory 256 --tag lab >/dev/null
done

"$kumo" machines list
cat <<MSG

kumo region: http://127.0.0.1:5240 (data in $KUMO_DATA_DIR)
In another shell:
  export KUMO_CONFIG_DIR=$KUMO_CONFIG_DIR
  $kumo machines commission lab-1     # powers the QEMU machine on
  $kumo machines power-state lab-1
  $kumo events --machine lab-1
Ctrl-C stops the region and the lab.
MSG
wait "$region"
