#!/usr/bin/env bash
# Region benchmark: list/show/allocate latency and region RSS by machine
# count, on SQLite and PostgreSQL, against release builds of the real
# `kumo` binary. Arguments go to `kumo-bench region`, e.g.
#   scripts/bench-region.sh --sizes 10,100,1000 --engines sqlite
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p kumo -p kumo-bench
# The private test server; without it, only --engines sqlite can run.
if pg_url=$(scripts/pg-test-server.sh start); then
  export KUMO_TEST_PG_URL=$pg_url
else
  echo "bench-region: no PostgreSQL server; run with --engines sqlite" >&2
fi
exec target/release/kumo-bench region "$@"
