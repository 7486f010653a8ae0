#!/usr/bin/env bash
# The guest half of bench/device_pinning.sh (runs in the test VM as root, or
# natively as root on a host with /dev/ublk-control).
#
# Sweeps queue-thread layouts of /dev/ublkbN: queues (1, 2) x CPU set
# (`same`: every queue thread on the last CPU, away from the submitter;
# `spread`: the default, queues round robin over every online CPU, so queue
# 0 shares CPU 0 with the submitter) x poll mode (busy, adaptive,
# interrupt), each with fio 4 KiB randread at QD 1 and QD 32 (one job pinned
# to CPU 0, io_uring, direct, $SHARDBLK_PIN_SECS s) over a fully written volume on
# the hot tier. Prints one table (IOPS, p50, p99, the daemon's CPU use in %
# of one core, measured from /proc/PID/stat) and a recommended layout picked
# from the measured table by the rule at the end (not hard-coded).
. "$(dirname "$0")/../tests/vm/lib.sh"
SECS="${SHARDBLK_PIN_SECS:-3}"
SIZE_MB=256
ncpu="$(nproc)"
last=$((ncpu - 1))
[ "$ncpu" -ge 2 ] || die "needs at least 2 CPUs"

make_pool 512M 256M
"$B" volume create pin --size ${SIZE_MB}M --shard-size 1M >/dev/null
dev="$("$B" add --volume pin --number 6 2>/dev/null)" || die "add"
wait_dev "$dev"
dd if=/dev/urandom of="$dev" bs=1M count=$SIZE_MB oflag=direct status=none
"$B" del -n 6

ticks() { # pid -> utime+stime in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}
hz="$(getconf CLK_TCK)"
out="$W/pinning.tsv"
: >"$out"
# The layouts run in a seeded random order (SHARDBLK_PIN_SEED, default 1):
# on a shared host the load drifts, and a fixed order would hand the drift to
# the same layouts every time.
seed="${SHARDBLK_PIN_SEED:-1}"
echo "layout order seed $seed"
layouts="$(python3 -c '
import random, sys
ls = [f"{q} {s} {p}" for q in (1, 2) for s in ("same", "spread") for p in ("busy", "adaptive", "interrupt")]
random.Random(int(sys.argv[1])).shuffle(ls)
print("\n".join(ls))' "$seed")"
while read -r queues set poll <&3; do
    case $set in same) cpus="$last" ;; spread) cpus="0-$last" ;; esac
    dev="$("$B" add --volume pin --number 6 --queues "$queues" --cpus "$cpus" --poll "$poll" 2>/dev/null)" ||
        die "add --queues $queues --cpus $cpus --poll $poll"
    wait_dev "$dev"
    pid="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' \
        "$SHARDBLK_RUN_DIR/ublkb6.json")"
    for qd in 1 32; do
        t0="$(ticks "$pid")"
        s0="$(date +%s.%N)"
        (cd "$W" && fio --name=p --filename="$dev" --direct=1 --ioengine=io_uring --rw=randread \
            --bs=4k --iodepth="$qd" --time_based --runtime="$SECS" --cpus_allowed=0 \
            --output-format=json >"$W/p.json") || die "fio"
        t1="$(ticks "$pid")"
        s1="$(date +%s.%N)"
        python3 - "$queues" "$set" "$poll" "$qd" "$W/p.json" "$t0" "$t1" "$s0" "$s1" "$hz" >>"$out" <<'PY'
import json, sys
q, cset, poll, qd, path, t0, t1, s0, s1, hz = sys.argv[1:]
r = json.load(open(path))["jobs"][0]["read"]
p = r["clat_ns"]["percentile"]
cpu = (int(t1) - int(t0)) / int(hz) / (float(s1) - float(s0)) * 100
print(f"{q}\t{cset}\t{poll}\t{qd}\t{r['iops']:.0f}\t{p['50.000000']/1000:.1f}\t{p['99.000000']/1000:.1f}\t{cpu:.0f}")
PY
    done
    "$B" del -n 6
done 3<<<"$layouts"

python3 - "$out" "$ncpu" <<'PY'
import sys
rows = sorted((l.rstrip("\n").split("\t") for l in open(sys.argv[1])),
              key=lambda r: (r[0], r[1], ["busy", "adaptive", "interrupt"].index(r[2]), int(r[3])))
ncpu = sys.argv[2]
print(f"{'QUEUES':>6} {'CPUS':<7} {'POLL':<10} {'QD':>3} {'IOPS':>8} {'p50us':>9} {'p99us':>9} {'CPU%':>5}")
for q, s, poll, qd, iops, p50, p99, cpu in rows:
    print(f"{q:>6} {s:<7} {poll:<10} {qd:>3} {iops:>8} {p50:>9} {p99:>9} {cpu:>5}")
# One layout = (queues, cpu set, poll); its figures at QD1 and QD32.
lay = {}
for q, s, poll, qd, iops, p50, p99, cpu in rows:
    lay.setdefault((q, s, poll), {})[int(qd)] = dict(iops=float(iops), p50=float(p50), p99=float(p99), cpu=float(cpu))
lay = {k: v for k, v in lay.items() if 1 in v and 32 in v}
best_iops = max(v[32]["iops"] for v in lay.values())
best_p99 = min(v[1]["p99"] for v in lay.values())
# Recommended: within 10% of the best QD32 IOPS and within 25% of the best
# QD1 p99; among those, the least daemon CPU (mean of both depths).
ok = [k for k, v in lay.items() if v[32]["iops"] >= 0.9 * best_iops and v[1]["p99"] <= 1.25 * best_p99]
if not ok:
    ok = [k for k, v in lay.items() if v[32]["iops"] >= 0.9 * best_iops]
cpu = lambda k: (lay[k][1]["cpu"] + lay[k][32]["cpu"]) / 2
rec = min(ok, key=cpu)
fast = min(lay, key=lambda k: lay[k][1]["p99"])
eff = max(lay, key=lambda k: lay[k][32]["iops"] / max(lay[k][32]["cpu"], 1.0))
def show(k):
    q, s, poll = k
    v = lay[k]
    return (f"--queues {q} --cpus {'<one core away from the app>' if s == 'same' else '<all cores, the default>'}"
            f" --poll {poll}: QD32 {v[32]['iops']:.0f} IOPS, QD1 p99 {v[1]['p99']:.0f} us, CPU {cpu(k):.0f}%")
print(f"\nrecommended on this box ({ncpu} CPUs): {show(rec)}")
print(f"lowest QD1 p99: {show(fast)}")
print(f"most IOPS per CPU at QD32: {show(eff)}")
PY
