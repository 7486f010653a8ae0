#!/usr/bin/env bash
# bench/prefetch_replay.sh: end-to-end prefetch benchmark in the test VM.
# Replays traces with fio read_iolog against /dev/ublkbN whose cold tier is a
# dm-delay device (HDD-like latency), with prefetch off, readahead, markov
# (and lstm when the build has it), and measures what prefetching costs a
# purely random workload. Run from the repository root:
#     bench/prefetch_replay.sh
# Env: SHARDBLK_PF_COLD_MS (cold tier delay, default 8), SHARDBLK_PF_SHARD (shard size,
# default 1M), SHARDBLK_PF_TRACES (real traces,
# default /work/shared/traces), SHARDBLK_PF_LSTM_MODEL (--prefetch-model for lstm),
# SHARDBLK_PF_REALTIME=1 (the guest at real-time priority, tools/vm/run.sh
# --realtime: rounds agree within a few percent on a loaded host, but the
# host gets only 5 % meanwhile), and the guest's own (prefetch_replay_guest.sh).
# The table is printed and left in $SHARDBLK_VM_OUT/prefetch_replay.txt.
# Under TCG absolute latencies of the hot tier are emulation-bound; compare
# the predictors with each other.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
rt=()
[ "${SHARDBLK_PF_REALTIME:-0}" = 1 ] && rt=(--realtime)
SHARDBLK_BIN="$PWD/target/release/shardblk" \
    SHARDBLK_VM_EXTRA_MODULES="${SHARDBLK_VM_EXTRA_MODULES:-dm_cache dm_cache_smq}" \
    tools/vm/run.sh "${rt[@]}" --mem 4096 --timeout 2400 bench/prefetch_replay_guest.sh
