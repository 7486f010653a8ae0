#!/usr/bin/env bash
# bench/device_compare.sh: /dev/ublkbN (shardblk, all shards on the hot tier)
# against the kernel loop driver and rublk's loop target, in one guest run of
# the test VM. Run from the repository root:  bench/device_compare.sh
#
# Installs rublk (the peer, `cargo install rublk --no-default-features`) into
# .vm/bin when missing (about 7 minutes the first time), builds shardblk in
# release mode, then runs bench/device_compare_guest.sh in the VM, which
# prints one table of IOPS, bandwidth and p50/p99 latency with the ratios to
# rublk. Under TCG absolute numbers are low: read the ratios. The guest runs
# at real-time priority (run.sh --realtime), so host load barely moves them.
# SHARDBLK_BASELINE_BIN=path/to/older/shardblk adds that build as a fourth
# target (`before`), for before/after comparisons within one guest run.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh >/dev/null
if [ ! -x .vm/bin/rublk ]; then
    echo "installing rublk into .vm/bin (the peer we compare with)" >&2
    cargo install --quiet rublk --no-default-features --root .vm
fi
cargo build --release --quiet
SHARDBLK_BIN="$PWD/target/release/shardblk" SHARDBLK_RUBLK="$PWD/.vm/bin/rublk" \
    SHARDBLK_BASELINE_BIN="${SHARDBLK_BASELINE_BIN:-}" SHARDBLK_CMP_ROUNDS="${SHARDBLK_CMP_ROUNDS:-3}" \
    tools/vm/run.sh --realtime --mem 4096 --timeout 1500 bench/device_compare_guest.sh
