#!/usr/bin/env bash
# tools/vm/smoke.sh: smoke test of the shardblk test VM; run it with
#   tools/vm/run.sh tools/vm/smoke.sh
# Checks, inside the guest: /dev/ublk-control exists; the ublk feature flags
# (when setup.sh could build ublk-features); a null_blk device made through
# configfs serves a 3 s fio randread; a dm-delay device (8 ms) over a loop file
# in the scratch tmpfs shows >= 8 ms read latency in fio. With rublk installed
# in $SHARDBLK_VM_DIR/bin (see kernel-notes/vm.md), also checks that
# `rublk add loop` creates /dev/ublkb0 and that fio reads it.
# Exits non-zero on the first failed check.
set -euo pipefail

step() { printf '== %s\n' "$*"; }
die() { printf 'SMOKE FAIL: %s\n' "$*" >&2; exit 1; }
[ "${SHARDBLK_VM:-}" = 1 ] || die "run me through tools/vm/run.sh"

# fio_summary NAME FIO-ARGS...: runs fio, prints "iops=.. mean=..us p99=..us", sets LAT_MEAN_US.
fio_summary() {
    local name="$1" json
    shift
    json="$(fio --name="$name" --output-format=json --direct=1 --bs=4k --rw=randread "$@")" ||
        die "fio $name failed"
    read -r IOPS LAT_MEAN_US P99_US < <(python3 -c '
import json, sys
r = json.load(sys.stdin)["jobs"][0]["read"]
pct = r["clat_ns"].get("percentile", {})
print(round(r["iops"]), round(r["lat_ns"]["mean"] / 1000), round(pct.get("99.000000", 0) / 1000))
' <<<"$json")
    printf '   %s: iops=%s mean_lat=%sus p99_clat=%sus\n' "$name" "$IOPS" "$LAT_MEAN_US" "$P99_US"
}

step "kernel $(uname -r), $(nproc) vCPU, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"

step "ublk driver"
[ -c /dev/ublk-control ] || die "/dev/ublk-control missing"
echo "   /dev/ublk-control: $(stat -c 'char %t:%T' /dev/ublk-control)"
feat="${SHARDBLK_VM_DIR:-}/bin/ublk-features"
if [ -x "$feat" ]; then
    "$feat" | sed 's/^/   /' || die "UBLK_U_CMD_GET_FEATURES failed"
else
    echo "   (ublk-features not built: skipping the feature flags)"
fi

step "null_blk via configfs + fio randread 3 s"
nb=/sys/kernel/config/nullb/smoke
mkdir "$nb"
echo 1024 >"$nb/size"      # MiB
echo 4096 >"$nb/blocksize"
echo 1 >"$nb/power"
# The disk is named after the configfs item on recent kernels, nullb<index> before.
dev=/dev/smoke
[ -b "$dev" ] || dev="/dev/nullb$(cat "$nb/index")"
[ -b "$dev" ] || die "$dev not created"
fio_summary nullb --filename="$dev" --ioengine=io_uring --iodepth=16 --time_based --runtime=3
[ "$IOPS" -gt 0 ] || die "no I/O completed on $dev"
echo 0 >"$nb/power"
rmdir "$nb"

step "dm-delay (8 ms) over a loop file in /tmp"
truncate -s 64M /tmp/smoke-loop.img
loopdev="$(losetup -f --show /tmp/smoke-loop.img)"
sectors="$(blockdev --getsz "$loopdev")"
echo "0 $sectors delay $loopdev 0 8" | dmsetup create smoke-delay
dmsetup mknodes
[ -b /dev/mapper/smoke-delay ] || die "/dev/mapper/smoke-delay missing after dmsetup mknodes"
fio_summary dm-delay --filename=/dev/mapper/smoke-delay --ioengine=psync --iodepth=1 \
    --time_based --runtime=2
[ "$LAT_MEAN_US" -ge 8000 ] || die "dm-delay mean latency ${LAT_MEAN_US}us < 8000us"
[ "$LAT_MEAN_US" -lt 100000 ] || die "dm-delay mean latency ${LAT_MEAN_US}us implausibly high"
dmsetup remove smoke-delay
losetup -d "$loopdev"
rm -f /tmp/smoke-loop.img

rublk="${SHARDBLK_VM_DIR:-}/bin/rublk"
if [ -x "$rublk" ]; then
    truncate -s 256M /tmp/smoke-rublk.img
    # Plain copy mode, then zero copy (-z: UBLK_F_AUTO_BUF_REG).
    for mode in copy zero-copy; do
        step "rublk add loop ($mode) + fio"
        opts=()
        [ "$mode" = zero-copy ] && opts=(-z)
        "$rublk" add loop --quiet -n 0 "${opts[@]}" -f /tmp/smoke-rublk.img
        for _ in $(seq 50); do [ -b /dev/ublkb0 ] && break; sleep 0.1; done
        [ -b /dev/ublkb0 ] || die "rublk did not create /dev/ublkb0"
        fio_summary "ublk-loop-$mode" --filename=/dev/ublkb0 --ioengine=io_uring --iodepth=16 \
            --time_based --runtime=3
        [ "$IOPS" -gt 0 ] || die "no I/O completed on /dev/ublkb0"
        "$rublk" del -n 0
        for _ in $(seq 50); do [ -e /dev/ublkb0 ] || break; sleep 0.1; done
        [ ! -e /dev/ublkb0 ] || die "/dev/ublkb0 still present after rublk del"
    done
    rm -f /tmp/smoke-rublk.img
fi

step "SMOKE OK"
