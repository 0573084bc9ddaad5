#!/usr/bin/env bash
# kumo's test command: installs what the suites need (Debian packages, the
# PyPI BMC emulator), starts a private PostgreSQL, checks formatting and
# lints, then runs every suite — unit, integration and end to end — on
# both store engines. Run from anywhere: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "dependencies"
df -h . | tail -n 1 | awk '{ print "disk: " $4 " free of " $2 }'
# One clean build: incremental state would only double the target dir.
if [[ "${CI:-}" == "true" ]]; then export CARGO_INCREMENTAL=0; fi
need=()
for p in postgresql qemu-system-x86; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  echo "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bash scripts/deps-power.sh
bash scripts/deps-dhcp.sh
bash scripts/deps-tftp.sh
bash scripts/deps-dns.sh
bash scripts/deps-rack.sh
bash scripts/deps-agent.sh
bash scripts/deps-images.sh
bash scripts/deps-containers.sh

step "postgresql"
KUMO_TEST_PG_URL=$(bash scripts/pg-test-server.sh start)
export KUMO_TEST_PG_URL
trap 'bash scripts/pg-test-server.sh stop' EXIT
echo "test server at $KUMO_TEST_PG_URL"

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
mkdir -p .cache
rm -f .cache/openstack-e2e.txt
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee .cache/test.log
status=${PIPESTATUS[0]}
set -e
# What the OpenStack suite measured (cargo hides a passing test's output).
if [[ -f .cache/openstack-e2e.txt ]]; then
  step "the install guide's cloud: kumo verify openstack and timings"
  cat .cache/openstack-e2e.txt
fi
# One summary line that counts every suite, for people and for CI.
awk '/^test result:/ { p += $4; f += $6 } END { printf "\nkumo: %d passed, %d failed\n", p, f }' .cache/test.log
exit "$status"
