#!/usr/bin/env bash
# bench/device_poll.sh: poll modes and zero copy of /dev/ublkbN compared, in
# the test VM:  tools/vm/run.sh bench/device_poll.sh   (after cargo build)
#
# One queue pinned to CPU 1, a 256 MiB volume fully written on the hot tier
# (files in the guest tmpfs), fio 4 KiB randread for 5 s at QD 1 and QD 16
# per (poll mode x zero copy). Prints one table: IOPS, p50 and p99 latency.
# Under TCG the numbers only rank the modes roughly; rerun on real hardware.
. "$(dirname "$0")/../tests/vm/lib.sh"

make_pool 512M 512M
"$B" volume create bvol --size 256M --shard-size 1M >/dev/null
dev="$("$B" add --volume bvol --number 5 2>/dev/null)"
wait_dev "$dev"
dd if=/dev/urandom of="$dev" bs=1M count=256 oflag=direct status=none
"$B" del -n 5

printf '%-10s %-5s %4s %9s %9s %9s\n' POLL ZC QD IOPS p50us p99us
for zc in off on; do
    for poll in interrupt adaptive busy; do
        dev="$("$B" add --volume bvol --number 5 --cpus 1 --poll "$poll" --zero-copy "$zc" 2>/dev/null)" ||
            die "add --poll $poll --zero-copy $zc"
        wait_dev "$dev"
        for qd in 1 16; do
            (cd "$W" && fio --name=b --filename="$dev" --direct=1 --ioengine=io_uring --rw=randread \
                --bs=4k --iodepth="$qd" --time_based --runtime=5 --cpus_allowed=0 \
                --output-format=json >"$W/b.json") || die "fio"
            python3 - "$poll" "$zc" "$qd" "$W/b.json" <<'PY'
import json, sys
poll, zc, qd, path = sys.argv[1:]
r = json.load(open(path))["jobs"][0]["read"]
p = r["clat_ns"]["percentile"]
print(f"{poll:<10} {zc:<5} {qd:>4} {r['iops']:>9.0f} {p['50.000000']/1000:>9.1f} {p['99.000000']/1000:>9.1f}")
PY
        done
        "$B" del -n 5
    done
done
