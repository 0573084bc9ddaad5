#!/usr/bin/env bash
# Agents benchmark: the controller's RSS per agent connection and `kumo
# status` latency with 1,000 and 10,000 simulated machine agents (the real
# agent protocol, no hooks) against a release build. Arguments go to
# `kumo-bench agents`, e.g.
#   scripts/bench-agents.sh --counts 1000,10000
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p kumo-bench
target_dir=${CARGO_TARGET_DIR:-target}
if [ "$#" -eq 0 ]; then
  set -- --counts 1000,10000
fi
exec "$target_dir/release/kumo-bench" agents "$@"
