#!/usr/bin/env bash
# bench/device_pinning.sh: sweep the queue-thread layout of /dev/ublkbN
# (queues 1,2 x CPU set same-core/spread x poll busy/adaptive/interrupt) on
# 4 KiB randread QD1 and QD32, print one table (IOPS, p50, p99, daemon CPU)
# and a layout recommended for this box, picked from the measured table.
# Run from the repository root:  bench/device_pinning.sh
#
# Builds shardblk in release mode, then runs bench/device_pinning_guest.sh
# in the test VM (natively when this host has /dev/ublk-control and we are
# root). SHARDBLK_PIN_SECS sets the seconds per point (default 3; 24 points),
# SHARDBLK_PIN_SEED the seed of the (random) layout order.
# Under TCG the figures rank layouts roughly at best: see kernel-notes/ublk.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
export SHARDBLK_BIN="$PWD/target/release/shardblk"
if [ -c /dev/ublk-control ] && [ "$(id -u)" = 0 ]; then
    exec bash bench/device_pinning_guest.sh
fi
SHARDBLK_PIN_SECS="${SHARDBLK_PIN_SECS:-3}" SHARDBLK_PIN_SEED="${SHARDBLK_PIN_SEED:-1}" tools/vm/run.sh --realtime --timeout 900 bench/device_pinning_guest.sh
