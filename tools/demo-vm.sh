#!/usr/bin/env bash
# The device half of the demo, run inside the test VM (tools/vm/run.sh) or
# natively where the host has /dev/ublk-control: a tiered pool, a thin
# volume served as /dev/ublkb0, fio against it, and the latency histogram.
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
