#!/usr/bin/env bash
# Builds kumo's XDP programs with clang's BPF target. The objects are
# committed (so building kumo needs no clang); the dns crate's test
# `the_xdp_object_is_built_from_its_source` runs this into a temporary
# directory and compares. Usage: bash scripts/build-xdp.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-crates/dns/xdp}
command -v clang >/dev/null || { echo "build-xdp: clang is needed (apt-get install clang)" >&2; exit 1; }
# No -g: no BTF and no paths in the object, so it is the same wherever it
# is built with the same clang.
clang -O2 -target bpf -Wall -Werror -I/usr/include/x86_64-linux-gnu \
  -c crates/dns/xdp/answer.bpf.c -o "$out/answer.bpf.o"
