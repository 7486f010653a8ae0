#!/usr/bin/env bash
# The demo: a tiered pool on two files (hot and cold), a 64 GiB thin volume,
# data in and out through the engine, persistence across processes, a policy
# window; a volume served as /dev/ublkb0 under fio with `shardblk stats`
# (inside the test VM when the host has no ublk driver); the prefetch
# baselines on real traces; and the engine against fio on the same file.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh >/dev/null
cargo build --release --quiet
B=target/release/shardblk
D=$(mktemp -d "${SHARDBLK_DEMO_DIR:-/var/tmp}/shardblk-demo.XXXXXX")
trap 'rm -rf "$D"' EXIT
truncate -s 512M "$D/hot.img"
truncate -s 2G "$D/cold.img"
export SHARDBLK_POOL="$D/hot.img"

step() { printf '\n== %s\n' "$*"; }
step "pool init: hot=512M file, cold=2G file"
$B pool init --tier hot="$D/hot.img" --tier cold="$D/cold.img"
step "volume create: 64G thin, 1M shards, born cold, promoted after 2 reads"
$B volume create demo --size 64G --shard-size 1M --policy write=cold,promote=2
step "write 64 MiB of random data at offset 1G, and 8 MiB at 40G"
head -c 64M /dev/urandom >"$D/data"
head -c 8M /dev/urandom >"$D/data2"
$B volume write demo --input "$D/data" --offset 1G
$B volume write demo --input "$D/data2" --offset 40G
step "read back (a new process opens the pool from its devices) and compare"
$B volume read demo --offset 1G --length 64M --output "$D/back"
$B volume read demo --offset 40G --length 8M --output "$D/back2"
cmp "$D/data" "$D/back" && cmp "$D/data2" "$D/back2" && echo "identical: 72 MiB"
step "unwritten space reads as zeros"
$B volume read demo --offset 20G --length 1M --output - | cmp - <(head -c 1M /dev/zero) && echo "zeros"
step "inspect: only the 72 MiB written is allocated, on the cold tier"
$B volume inspect demo
$B pool status
step "policy: new writes go hot; hot tier watermarks 10%/5%, so a policy window demotes the excess"
$B volume policy demo write=hot,promote=2,high=10,low=5
$B volume write demo --input "$D/data" --offset 50G
$B pool status
$B pool balance --windows 1
$B pool status
step "the volume as a block device: /dev/ublkb0 in the test VM (the host has no ublk)"
if [ -c /dev/ublk-control ]; then
  SHARDBLK_BIN="$PWD/$B" SHARDBLK_VM=1 bash tools/demo-vm.sh
else
  SHARDBLK_BIN="$PWD/$B" SHARDBLK_VM_EXTRA_MODULES=ext4 tools/vm/run.sh --timeout 600 tools/demo-vm.sh
fi
step "prefetch on real traces: the baselines and the LSTM (offline tier simulator)"
target/release/shardblk trace eval ../shared/traces/lirs-multi1.blocks ../shared/traces/umass_websearch_mqsim.csv.gz --shard-size 64K,1M
step "engine vs fio on one file (4 KiB random QD1/QD32, 1 MiB sequential QD4; ${SHARDBLK_BENCH_SECS:=2} s each)"
SHARDBLK_BENCH_DIR="$D" SHARDBLK_BENCH_SECS="$SHARDBLK_BENCH_SECS" cargo bench --quiet --bench io_vs_fio 2>/dev/null
