#!/usr/bin/env bash
# HTTP boot throughput: kumo's rack HTTP server (`kumo rack serve`, the
# /boot/ files machines fetch kernels, initramfs and images from) against
# nginx serving the same file, in one run on this machine. Both serve from
# a network namespace over a veth; curl downloads from a second namespace,
# one stream and four in parallel, each best of three.
#   bash scripts/bench-http.sh [size-MiB]     (default 256)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-256}
source scripts/apt-ensure.sh
apt_ensure bench-http nginx-light curl iproute2 >/dev/null
cargo build --release -q -p kumo
kumo=$PWD/target/release/kumo

work=$(mktemp -d)
srv=kbh-srv-$$ cli=kbh-cli-$$
cleanup() {
  ip netns pids "$srv" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns del "$srv" 2>/dev/null || true
  ip netns del "$cli" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$srv"; ip netns add "$cli"
ip -n "$srv" link set lo up; ip -n "$cli" link set lo up
ip -n "$srv" link add eth0 type veth peer name eth0 netns "$cli"
ip -n "$srv" addr add 10.219.0.1/24 dev eth0; ip -n "$srv" link set eth0 up
ip -n "$cli" addr add 10.219.0.2/24 dev eth0; ip -n "$cli" link set eth0 up

mkdir -p "$work/rack/boot" "$work/nginx" "$work/config"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$work/rack/boot/image.bin"
cp "$work/rack/boot/image.bin" "$work/nginx/image.bin"
want=$(sha256sum < "$work/rack/boot/image.bin" | cut -d' ' -f1)

# The rack needs a profile; its region need not answer for files to be served.
printf '{"current":"bench","profiles":{"bench":{"url":"http://127.0.0.1:9","key":"none"}}}' > "$work/config/profiles.json"
KUMO_CONFIG_DIR=$work/config KUMO_LOG=error ip netns exec "$srv" "$kumo" rack serve -i eth0 --name bench \
  --data-dir "$work/rack" --no-dns --tftp-port 6969 --rogue-dhcp-interval 0 2>"$work/rack.log" &
cat > "$work/nginx.conf" <<EOF
daemon off;
user root;
worker_processes auto;
error_log $work/nginx.err;
pid $work/nginx.pid;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  server { listen 10.219.0.1:8080; root $work/nginx; }
}
EOF
ip netns exec "$srv" nginx -c "$work/nginx.conf" -p "$work" &
for _ in $(seq 100); do
  ip netns exec "$cli" curl -sf -o /dev/null http://10.219.0.1:5248/healthz &&
    ip netns exec "$cli" curl -sf -o /dev/null -r 0-0 http://10.219.0.1:8080/image.bin && break
  sleep 0.1
done

# MB/s of one download (curl's own average speed), checked by checksum once.
one() { ip netns exec "$cli" curl -sf -o /dev/null -w '%{speed_download}' "$1"; }
check() {
  got=$(ip netns exec "$cli" curl -sf "$1" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "bench-http: $1 served a different file" >&2; exit 1; }
}
best() { # best of three, MB/s
  local b=0 s
  for _ in 1 2 3; do
    s=$("$@")
    b=$(awk -v a="$b" -v s="$s" 'BEGIN { print (s > a ? s : a) }')
  done
  echo "$b"
}
single() { awk -v s="$(one "$1")" 'BEGIN { printf "%.0f", s / 1e6 }'; }
parallel() { # 4 streams at once: total bytes over wall time
  local t0 t1
  t0=$(date +%s.%N)
  for _ in 1 2 3 4; do ip netns exec "$cli" curl -sf -o /dev/null "$1" & done
  wait
  t1=$(date +%s.%N)
  awk -v n="$size_mib" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", 4 * n * 1.048576 / (b - a) }'
}
range() { # a 1 MiB Range request from the middle, as a resumed download does
  ip netns exec "$cli" curl -sf -o /dev/null -w '%{http_code}' -r "$((size_mib / 2 * 1048576))-$((size_mib / 2 * 1048576 + 1048575))" "$1"
}

kumo_url=http://10.219.0.1:5248/boot/image.bin
nginx_url=http://10.219.0.1:8080/image.bin
check "$kumo_url"; check "$nginx_url"
printf '\nHTTP boot: %d MiB file over a veth, curl from another namespace; MB/s, best of 3\n' "$size_mib"
printf '%-28s %12s %12s %8s\n' server "1 stream" "4 streams" Range
for s in kumo nginx; do
  url=${s}_url
  printf '%-28s %12s %12s %8s\n' \
    "$([ $s = kumo ] && echo "kumo rack (axum+tower-http)" || nginx -v 2>&1 | sed 's/.*: //; s/$/ (sendfile)/')" \
    "$(best single "${!url}")" "$(best parallel "${!url}")" "$(range "${!url}")"
done
