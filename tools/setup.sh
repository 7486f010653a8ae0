#!/usr/bin/env bash
# Install everything shardblk needs on a fresh Debian machine (idempotent, quiet).
# Host packages only; the test VM's kernel is fetched by tools/vm/setup.sh.
set -euo pipefail
need=(fio e2fsprogs util-linux libclang-dev clang pkg-config python3-venv iproute2)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found (Rust toolchain required)" >&2; exit 1; }
echo "setup: host packages ready"
# libtorch for the LSTM prefetcher (crates/shardblk-lstm, the shardblk-lstm executable).
"$(dirname "$0")/torch-setup.sh"
