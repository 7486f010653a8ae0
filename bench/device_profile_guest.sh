#!/usr/bin/env bash
# The guest half of bench/device_profile.sh (runs in the test VM as root):
# one fio job against shardblk's /dev/ublkbN and against rublk's loop target
# (same setup as bench/device_compare_guest.sh: 384 MiB on the guest tmpfs,
# one queue on CPU 1, fio on CPU 0), each under a system-wide `perf record`
# (cpu-clock, kernel and user symbols), then the profile of each run by
# thread and symbol. Arguments: RW BS QD SECS (default randwrite 4k 1 8).
# SHARDBLK_PROFILE_ADD_ARGS: extra `shardblk add` flags (e.g. --zero-copy off).
. "$(dirname "$0")/../tests/vm/lib.sh"
RW="${1:-randwrite}" BS="${2:-4k}" QD="${3:-1}" SECS="${4:-8}"
SIZE_MB=384
PERF="$(command -v perf)" || die "no perf on the host (apt install linux-perf)"

make_pool 512M 256M
"$B" volume create cmp --size ${SIZE_MB}M --shard-size 1M >/dev/null
# shellcheck disable=SC2086
sb="$("$B" add --volume cmp --number 3 --cpus 1 ${SHARDBLK_PROFILE_ADD_ARGS:-})" || die "shardblk add"
wait_dev "$sb"
dd if=/dev/urandom of="$sb" bs=1M count=$SIZE_MB oflag=direct status=none

targets="shardblk"
if [ -n "${SHARDBLK_RUBLK:-}" ] && [ -x "$SHARDBLK_RUBLK" ]; then
    dd if=/dev/urandom of="$W/rublk.img" bs=1M count=$SIZE_MB status=none
    "$SHARDBLK_RUBLK" add loop --quiet -n 4 -q 1 -f "$W/rublk.img" >/dev/null 2>&1 || die "rublk add"
    wait_dev /dev/ublkb4
    targets="shardblk rublk"
fi
cleanup_all() {
    [ -z "${SHARDBLK_RUBLK:-}" ] || "$SHARDBLK_RUBLK" del -n 4 >/dev/null 2>&1 || true
    cleanup
}
trap cleanup_all EXIT
# rublk's threads on CPU 1, like shardblk's queue (bench/device_compare_guest.sh does the same).
[ -z "${SHARDBLK_RUBLK:-}" ] || taskset -a -pc 1 "$(pgrep -n -x rublk)" >/dev/null || die "pinning rublk"

for t in $targets; do
    case $t in shardblk) dev=$sb ;; rublk) dev=/dev/ublkb4 ;; esac
    fio --name=p --filename="$dev" --direct=1 --ioengine=io_uring --rw="$RW" --bs="$BS" \
        --iodepth="$QD" --time_based --runtime="$SECS" --cpus_allowed=0 \
        --output-format=json >"$W/p.json" &
    fpid=$!
    sleep 1
    "$PERF" record -q -e cpu-clock/freq=4000/ -e cs/period=1/ -a -g -o "$W/$t.data" -- sleep $((SECS - 2)) 2>/dev/null
    # For a closer look on the host: perf report -i FILE --kallsyms KALLSYMS
    if [ -n "${SHARDBLK_VM_OUT:-}" ] && [ -d "$SHARDBLK_VM_OUT" ]; then
        cp "$W/$t.data" "$SHARDBLK_VM_OUT/$t.perf.data" 2>/dev/null || true
        cat /proc/kallsyms >"$SHARDBLK_VM_OUT/kallsyms" 2>/dev/null || true
    fi
    wait $fpid || die "fio on $t"
    python3 - "$RW" "$W/p.json" "$t" <<'PY'
import json, sys
rw, path, t = sys.argv[1:]
j = json.load(open(path))["jobs"][0]
r = j["write" if "write" in rw else "read"]
p = r["clat_ns"]["percentile"]
print(f"== {t}: {r['iops']:.0f} IOPS p50 {p['50.000000']/1000:.1f} us p99 {p['99.000000']/1000:.1f} us")
PY
    { "$PERF" report -i "$W/$t.data" -g none --no-children --sort comm,cpu --stdio 2>/dev/null || true; } |
        grep -v '^#' | grep -v '^$' | head -n 16 || true
    for c in $t iou-wrk kworker; do
        echo "-- $t run, threads named $c*"
        { "$PERF" report -i "$W/$t.data" -g none --no-children --sort comm,dso,sym --stdio 2>/dev/null || true; } |
            awk -v c="$c" '$2 ~ "^"c' | head -n 25 || true
    done
done
"$B" stats -n 3
