#!/usr/bin/env bash
# The device half of the demo, run inside the test VM (tools/vm/run.sh) or
# natively where the host has /dev/ublk-control: a tiered pool, a thin
# volume served as /dev/ublkb0, fio against it, and the latency histogram;
# then a volume written on the cold tier served with the LSTM prefetcher:
# fio reads it in passes and `shardblk stats` shows what was staged and hit.
. "$(dirname "$0")/../tests/vm/lib.sh"
step "pool: hot 512M + cold 1G (files in the guest's tmpfs)"
make_pool 512M 1G
"$B" volume create demo --size 16G --shard-size 1M --policy write=hot >/dev/null
step "shardblk add: serve the 16G thin volume"
dev="$("$B" add --volume demo --queues 1 --depth 64)"
wait_dev "$dev"
echo "$dev"
"$B" list
step "fio: 4 KiB random read/write with crc32c verify, QD 16, 10 s"
(cd "$W" && fio --name=demo --filename="$dev" --direct=1 --ioengine=io_uring --rw=randrw \
    --bs=4k --iodepth=16 --size=256M --time_based --runtime=10 --verify=crc32c \
    --verify_fatal=1 --group_reporting | grep -E "IOPS|lat \(usec\)|err=")
step "shardblk stats: latency percentiles per op, read through the daemon's socket"
"$B" stats -n 0
step "the volume now: only what fio touched is mapped"
"$B" del -n 0
"$B" volume inspect demo

step "prefetch: a 128M volume written on the cold tier, served with --prefetch lstm"
"$B" volume create pf --size 128M --shard-size 1M --policy write=cold,promote=0 >/dev/null
dev="$("$B" add --volume pf --queues 1 --prefetch lstm --prefetch-budget 64M)"
wait_dev "$dev"
(cd "$W" && fio --name=pfw --filename="$dev" --direct=1 --ioengine=io_uring --rw=write --bs=1M \
    --size=96M --end_fsync=1 >/dev/null)
step "fio: 3 sequential 64 KiB read passes over 96M, QD 1 (the LSTM learns the stream as it goes)"
for pass in 1 2 3; do
    (cd "$W" && fio --name=pfr --filename="$dev" --direct=1 --ioengine=io_uring --rw=read \
        --bs=64k --iodepth=1 --size=96M | grep -E "^  read|clat \(usec\)" | sed "s/^/   pass $pass: /")
done
step "shardblk stats: latency by op and tier hit, and the prefetch figures"
n="${dev#/dev/ublkb}"
"$B" stats -n "$n"
"$B" del -n "$n"
