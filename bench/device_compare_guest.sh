#!/usr/bin/env bash
# The guest half of bench/device_compare.sh (runs in the test VM as root).
# Three targets on the same medium (the guest's tmpfs), each backed by its
# own 384 MiB file written in full first: shardblk (one queue pinned to CPU 1,
# a fully mapped volume on the hot tier), the kernel loop driver with direct
# I/O, and rublk's loop target (one queue, direct I/O, its threads pinned
# to CPU 1 like ours). fio runs pinned to CPU 0, io_uring, direct, 4 s per
# job; jobs interleave the targets (several rounds, see below).
# SHARDBLK_BASELINE_BIN (optional): another shardblk build, served the same
# way from its own pool, as a fourth target `before` (before/after a change).
# SHARDBLK_CMP_VARIANTS (optional): `NAME=ADD-FLAGS;...`, more targets served
# by the same shardblk binary from their own pools with extra `add` flags
# (e.g. `copy=--zero-copy off;unpinned=--cpus 0,1`).
# SHARDBLK_CMP_JOBS (optional): `RW:BS:QD,...` instead of the five default
# jobs; SHARDBLK_CMP_NO_LOOP=1 leaves the kernel loop driver out.
# SHARDBLK_CMP_RUBLK_FLOAT=1 adds `rublkfl`: a second rublk device whose
# threads keep libublk's affinity (every CPU of the queue's blk-mq map, so
# the scheduler can run it beside fio).
. "$(dirname "$0")/../tests/vm/lib.sh"
R="${SHARDBLK_RUBLK:?set SHARDBLK_RUBLK}"
[ -x "$R" ] || die "no rublk at $R"
SIZE_MB=384

make_pool 512M 256M
"$B" volume create cmp --size ${SIZE_MB}M --shard-size 1M >/dev/null
sb="$("$B" add --volume cmp --number 3 --cpus 1)" || die "shardblk add"
wait_dev "$sb"
dd if=/dev/urandom of="$sb" bs=1M count=$SIZE_MB oflag=direct status=none

targets="rublk loop shardblk"
BB="${SHARDBLK_BASELINE_BIN:-}"
if [ -n "$BB" ]; then
    [ -x "$BB" ] || die "no baseline binary at $BB"
    truncate -s 512M "$W/bhot.img"
    truncate -s 256M "$W/bcold.img"
    SHARDBLK_POOL="$W/bhot.img" "$BB" pool init --tier hot="$W/bhot.img" --tier cold="$W/bcold.img" >/dev/null
    SHARDBLK_POOL="$W/bhot.img" "$BB" volume create cmp --size ${SIZE_MB}M --shard-size 1M >/dev/null
    bb="$(SHARDBLK_POOL="$W/bhot.img" "$BB" add --volume cmp --number 5 --cpus 1)" || die "baseline add"
    wait_dev "$bb"
    dd if=/dev/urandom of="$bb" bs=1M count=$SIZE_MB oflag=direct status=none
    targets="rublk loop before shardblk"
fi

# Variants: one pool, volume and device each (numbers 6, 7, ...).
declare -A vdev=()
n=6
IFS=';' read -ra variants <<<"${SHARDBLK_CMP_VARIANTS:-}"
for v in "${variants[@]}"; do
    [ -n "$v" ] || continue
    name="${v%%=*}" flags="${v#*=}"
    truncate -s 512M "$W/$name-hot.img"
    truncate -s 256M "$W/$name-cold.img"
    SHARDBLK_POOL="$W/$name-hot.img" "$B" pool init --tier hot="$W/$name-hot.img" --tier cold="$W/$name-cold.img" >/dev/null
    SHARDBLK_POOL="$W/$name-hot.img" "$B" volume create cmp --size ${SIZE_MB}M --shard-size 1M >/dev/null
    # CPU 1 like the others, unless the flags name CPUs.
    case " $flags " in *" --cpus "*) cpus="" ;; *) cpus="--cpus 1" ;; esac
    # shellcheck disable=SC2086
    d="$(SHARDBLK_POOL="$W/$name-hot.img" "$B" add --volume cmp --number $n $cpus $flags)" || die "variant $name: add $flags"
    wait_dev "$d"
    dd if=/dev/urandom of="$d" bs=1M count=$SIZE_MB oflag=direct status=none
    vdev[$name]=$d
    targets="$targets $name"
    n=$((n + 1))
done
[ "${SHARDBLK_CMP_NO_LOOP:-0}" = 1 ] && targets="$(echo "$targets" | sed 's/ loop//')"

lo=""
if [ "${SHARDBLK_CMP_NO_LOOP:-0}" != 1 ]; then
    dd if=/dev/urandom of="$W/loop.img" bs=1M count=$SIZE_MB status=none
    lo="$(losetup --direct-io=on -f --show "$W/loop.img")" || die "losetup"
fi

dd if=/dev/urandom of="$W/rublk.img" bs=1M count=$SIZE_MB status=none
"$R" add loop --quiet -n 4 -q 1 -f "$W/rublk.img" >/dev/null 2>&1 || die "rublk add"
wait_dev /dev/ublkb4
ru=/dev/ublkb4
# The same placement as shardblk's queue: every thread of the rublk daemon
# (the newest rublk process) on CPU 1.
taskset -a -pc 1 "$(pgrep -n -x rublk)" >/dev/null || die "pinning rublk"
rf=""
if [ "${SHARDBLK_CMP_RUBLK_FLOAT:-0}" = 1 ]; then
    dd if=/dev/urandom of="$W/rublkfl.img" bs=1M count=$SIZE_MB status=none
    "$R" add loop --quiet -n 12 -q 1 -f "$W/rublkfl.img" >/dev/null 2>&1 || die "rublk add (float)"
    wait_dev /dev/ublkb12
    rf=/dev/ublkb12
    targets="$targets rublkfl"
fi
cleanup_all() {
    "$R" del -n 4 >/dev/null 2>&1 || true
    [ -z "$rf" ] || "$R" del -n 12 >/dev/null 2>&1 || true
    [ -z "$lo" ] || losetup -d "$lo" 2>/dev/null || true
    local d
    for d in "${vdev[@]}"; do "$B" del -n "${d#/dev/ublkb}" >/dev/null 2>&1 || true; done
    [ -z "$BB" ] || "$BB" del -n 5 >/dev/null 2>&1 || true
    cleanup
}
trap cleanup_all EXIT

run_fio() { # target rw bs qd -> "iops bw_MBps p50_us p99_us"
    (cd "$W" && fio --name=c --filename="$1" --direct=1 --ioengine=io_uring --rw="$2" --bs="$3" \
        --iodepth="$4" --time_based --runtime=4 --cpus_allowed=0 --output-format=json >"$W/c.json") ||
        die "fio $*"
    python3 - "$2" "$W/c.json" <<'PY'
import json, sys
rw, path = sys.argv[1:]
j = json.load(open(path))["jobs"][0]
r = j["write" if "write" in rw else "read"]
p = r["clat_ns"]["percentile"]
print(f"{r['iops']:.0f} {r['bw_bytes']/1e6:.1f} {p['50.000000']/1000:.1f} {p['99.000000']/1000:.1f}")
PY
}

# Each job runs SHARDBLK_CMP_ROUNDS times per target (default 3), the order
# of the targets reversed every other round; the table shows the median of
# each column over the rounds (the host is shared: single runs swing 2x).
ROUNDS="${SHARDBLK_CMP_ROUNDS:-3}"
: >"$W/rounds.txt"
printf '%-20s %-10s %9s %8s %9s %9s %8s %8s\n' WORKLOAD TARGET IOPS MB/s p50us p99us IOPS/ru p99/ru
jobs="${SHARDBLK_CMP_JOBS:-randread:4k:1,randread:4k:32,randwrite:4k:1,randwrite:4k:32,read:1M:4}"
for job in ${jobs//,/ }; do
    set -- ${job//:/ }
    declare -A res=()
    order="$targets"
    for r in $(seq "$ROUNDS"); do
        for t in $order; do
            case $t in
                rublk) dev=$ru ;; rublkfl) dev=$rf ;; loop) dev=$lo ;; shardblk) dev=$sb ;; before) dev=$bb ;;
                *) dev=${vdev[$t]} ;;
            esac
            res[$t]="${res[$t]:-}$(run_fio "$dev" "$1" "$2" "$3");"
        done
        order="$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')"
    done
    med() { # "a b c d;a b c d;..." -> medians of the four columns
        python3 -c '
import statistics, sys
rows = [r.split() for r in sys.argv[1].split(";") if r.strip()]
print(" ".join(f"{statistics.median(float(r[i]) for r in rows):.1f}" for i in range(4)))' "$1"
    }
    read -r ri rb rp50 rp99 <<<"$(med "${res[rublk]}")"
    for t in $(echo "$targets" | tr ' ' '\n' | tac); do
        read -r i b p50 p99 <<<"$(med "${res[$t]}")"
        printf '%-20s %-10s %9.0f %8s %9s %9s %8s %8s\n' "$1 $2 QD$3" "$t" "$i" "$b" "$p50" "$p99" \
            "$(python3 -c "print(f'{$i/$ri:.2f}')")" "$(python3 -c "print(f'{$p99/$rp99:.2f}')")"
    done
    # Every round's IOPS and p99, in run order, for judging the spread behind a median.
    for t in $(echo "$targets" | tr ' ' '\n' | tac); do
        echo "${res[$t]}" | tr ';' '\n' | awk -v j="$1 $2 QD$3" -v t="$t" \
            'NF { r = r " " int($1); q = q " " int($4) } END { printf "#  %-17s %-10s rounds:%s  p99us:%s\n", j, t, r, q }' >>"$W/rounds.txt"
    done
    unset res
done
cat "$W/rounds.txt"
"$B" stats -n 3
