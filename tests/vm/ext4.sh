#!/usr/bin/env bash
# tests/vm/ext4.sh: ext4 on /dev/ublkbN over a thin volume: mkfs, mount, copy
# a tree, unmount, fsck -fn clean, remount (after restarting the daemon) and
# compare checksums. Also checks the CLI's refusals and list/stats output.
. "$(dirname "$0")/lib.sh"

step "pool and a 2 GiB thin volume with 1 MiB shards"
make_pool 256M 1G
"$B" volume create fsvol --size 2G --shard-size 1M >/dev/null

step "features"
"$B" features

step "bad input is refused with one line and nothing created"
expect_fail() {
    local out
    if out="$("$B" "$@" 2>&1)"; then die "accepted: $*"; fi
    [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || die "not one line for $*: $out"
    echo "   refused: $out"
}
expect_fail add --volume nosuch
expect_fail add --volume fsvol --cpus 99
expect_fail add --volume fsvol --depth 0
expect_fail add --volume fsvol --depth 255
if "$B" features | grep -w AUTO_BUF_REG >/dev/null; then
    zc=on
else
    expect_fail add --volume fsvol --zero-copy on
    zc=off
fi
[ -z "$(ls /sys/class/ublk-char 2>/dev/null)" ] || die "a refused add left a device: $(ls /sys/class/ublk-char)"

step "add"
dev="$("$B" add --volume fsvol --number 0 --zero-copy auto)"
[ "$dev" = /dev/ublkb0 ] || die "add printed '$dev'"
wait_dev /dev/ublkb0
expect_fail add --volume fsvol --number 0
"$B" list
"$B" list --json | grep '"state": "live"' >/dev/null || die "list does not show live"
[ "$(cat /sys/block/ublkb0/queue/logical_block_size)" = 4096 ] || die "logical block size"
[ "$(cat /sys/block/ublkb0/queue/discard_granularity)" = 1048576 ] || die "discard granularity"
[ "$(blockdev --getsize64 /dev/ublkb0)" = 2147483648 ] || die "size"

step "mkfs.ext4, mount, copy a tree"
mkfs.ext4 -q -F /dev/ublkb0
mkdir -p /tmp/mnt
mount -t ext4 /dev/ublkb0 /tmp/mnt
src=/tmp/srctree
mkdir -p "$src"
cp -a /usr/share/doc/. "$src/" 2>/dev/null || true
head -c 16M /dev/urandom >"$src/big.bin"
for i in $(seq 200); do head -c $((i * 997)) /dev/urandom >"$src/small.$i"; done
cp -a "$src" /tmp/mnt/tree
(cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >/tmp/sums
echo "   $(wc -l </tmp/sums) files, $(du -sh "$src" | cut -f1)"
rm -f /tmp/mnt/tree/big.bin && fstrim -v /tmp/mnt || true
cp "$src/big.bin" /tmp/mnt/tree/big.bin
sync
umount /tmp/mnt

step "fsck -fn"
fsck.ext4 -fn /dev/ublkb0 || die "fsck found errors"

step "stats"
"$B" stats -n 0
"$B" stats -n 0 --json | grep '"op": "write"' >/dev/null || die "stats show no writes"

step "restart the daemon (del, add: 2 queues, adaptive poll, zero copy $zc), remount, compare checksums"
"$B" del -n 0
[ ! -e /sys/class/ublk-char/ublkc0 ] || die "del left the device"
echo 3 >/proc/sys/vm/drop_caches
"$B" add --volume fsvol --number 0 --queues 2 --cpus 0-1 --poll adaptive --zero-copy "$zc" >/dev/null
wait_dev /dev/ublkb0
"$B" list
"$B" list --json | python3 -c '
import json, sys
d = json.load(sys.stdin)[0]
assert d["queue_cpus"] == [0, 1], d
assert d["pinned"] == ["0", "1"], d
' || die "queue threads not pinned to CPUs 0 and 1"
mount -t ext4 /dev/ublkb0 /tmp/mnt
(cd /tmp/mnt/tree && sha256sum --quiet -c /tmp/sums) || die "checksums differ"
echo "   checksums match"
step "write through the new daemon: copy the tree again, fsck, compare"
cp -a "$src" /tmp/mnt/tree2
sync
(cd /tmp/mnt/tree2 && sha256sum --quiet -c /tmp/sums) || die "checksums of the second copy differ"
umount /tmp/mnt
fsck.ext4 -fn /dev/ublkb0 >/dev/null || die "fsck after remount"
"$B" del --all
echo "PASS ext4"
