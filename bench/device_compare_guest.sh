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
# cpuus/io: the serving daemon's CPU time (all threads, user + system, from
# /proc/PID/stat) per I/O fio completed ("-" for the kernel loop driver).
# SHARDBLK_CMP_RUBLK_FLOAT=1 adds `rublkfl`: a second rublk device whose
# threads keep libublk's affinity (every CPU of the queue's blk-mq map, so
# the scheduler can run it beside fio).
# SHARDBLK_CMP_RUBLK_ZC=1 adds `rublkzc`: a second rublk device with its zero
# copy on (`-z`, UBLK_F_AUTO_BUF_REG, as shardblk's default), pinned like
# `rublk`.
# I/O schedulers: each target keeps its own default. shardblk sets `none` on
# its disk (`add --io-scheduler`); rublk leaves the kernel's, mq-deadline for
# a one-queue disk. SHARDBLK_CMP_RUBLK_NONE=1 adds `rublknone`: a second
# rublk device with the scheduler `none`, pinned like `rublk` (like for like;
# `SHARDBLK_CMP_VARIANTS='deadline=--io-scheduler kernel'` is the converse).
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

# The rublk devices (rublk, and rublkfl/rublkzc when asked): each a loop
# target with one queue over its own fully written file. Pinned ones get the
# same placement as shardblk's queue: every thread of the daemon (the newest
# rublk process) on CPU 1.
declare -A rdev=() rpid=()
add_rublk() { # name number pin|float [rublk add flags...]
    local name=$1 n=$2 pin=$3
    shift 3
    dd if=/dev/urandom of="$W/$name.img" bs=1M count=$SIZE_MB status=none
    "$R" add loop --quiet -n "$n" -q 1 "$@" -f "$W/$name.img" >/dev/null 2>&1 || die "rublk add ($name)"
    wait_dev "/dev/ublkb$n"
    rdev[$name]=/dev/ublkb$n
    rpid[$name]="$(pgrep -n -x rublk)"
    [ "$pin" = float ] || taskset -a -pc 1 "${rpid[$name]}" >/dev/null || die "pinning $name"
}
add_rublk rublk 4 pin
if [ "${SHARDBLK_CMP_RUBLK_FLOAT:-0}" = 1 ]; then
    add_rublk rublkfl 12 float
    targets="$targets rublkfl"
fi
if [ "${SHARDBLK_CMP_RUBLK_ZC:-0}" = 1 ]; then
    add_rublk rublkzc 13 pin -z
    targets="$targets rublkzc"
fi
if [ "${SHARDBLK_CMP_RUBLK_NONE:-0}" = 1 ]; then
    add_rublk rublknone 14 pin
    targets="$targets rublknone"
    echo none >/sys/block/ublkb14/queue/scheduler || die "scheduler none on rublknone"
fi
# What each disk runs with (the active scheduler is in brackets).
for d in "$sb" ${bb:-} "${rdev[@]}" "${vdev[@]}"; do
    echo "# scheduler $d: $(cat "/sys/block/${d#/dev/}/queue/scheduler")"
done
cleanup_all() {
    local d
    for d in "${rdev[@]}"; do "$R" del -n "${d#/dev/ublkb}" >/dev/null 2>&1 || true; done
    [ -z "$lo" ] || losetup -d "$lo" 2>/dev/null || true
    for d in "${vdev[@]}"; do "$B" del -n "${d#/dev/ublkb}" >/dev/null 2>&1 || true; done
    [ -z "$BB" ] || "$BB" del -n 5 >/dev/null 2>&1 || true
    cleanup
}
trap cleanup_all EXIT

# The daemon serving each target (rublk, shardblk builds), for its CPU time
# per I/O: all of its threads, user and system (the kernel loop driver has no
# daemon: "-").
hz="$(getconf CLK_TCK)"
daemon_of() { # shardblk binary, device number -> daemon pid
    "$1" list --json | python3 -c '
import json, sys
n = int(sys.argv[1])
print(next(d["daemon"] for d in json.load(sys.stdin) if d["number"] == n))' "$2"
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A dpid=()
dpid[shardblk]="$(daemon_of "$B" 3)"
[ -z "$BB" ] || dpid[before]="$(daemon_of "$BB" 5)"
for name in "${!vdev[@]}"; do dpid[$name]="$(daemon_of "$B" "${vdev[$name]#/dev/ublkb}")"; done
for name in "${!rpid[@]}"; do dpid[$name]="${rpid[$name]}"; done

run_fio() { # target rw bs qd [daemon pid] [bins file] -> "iops bw_MBps p50_us p99_us cpu_us_per_io"
    # With a bins file, the round's whole completion-latency histogram (fio's
    # json+ bins) is appended to it, one JSON object per line, for the
    # pooled percentiles over all rounds.
    local t0=0
    [ -z "${5:-}" ] || t0="$(ticks "$5")"
    (cd "$W" && fio --name=c --filename="$1" --direct=1 --ioengine=io_uring --rw="$2" --bs="$3" \
        --iodepth="$4" --time_based --runtime=4 --cpus_allowed=0 --output-format=json+ >"$W/c.json") ||
        die "fio $*"
    (python3 - "$2" "$W/c.json" "${6:-}" <<'PY'
import json, sys
rw, path, bins = sys.argv[1:]
j = json.load(open(path))["jobs"][0]
r = j["write" if "write" in rw else "read"]
p = r["clat_ns"]["percentile"]
print(f"{r['iops']:.0f} {r['bw_bytes']/1e6:.1f} {p['50.000000']/1000:.1f} {p['99.000000']/1000:.1f} {r['total_ios']}")
if bins:
    with open(bins, "a") as f:
        f.write(json.dumps(r["clat_ns"].get("bins", {})) + "\n")
PY
    ) >"$W/c.txt"
    local ios cpu="-"
    read -r iops bw p50 p99 ios <"$W/c.txt"
    if [ -n "${5:-}" ] && [ "$ios" -gt 0 ]; then
        cpu="$(awk -v d="$(($(ticks "$5") - t0))" -v hz="$hz" -v n="$ios" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')"
    fi
    echo "$iops $bw $p50 $p99 $cpu"
}

# Each job runs SHARDBLK_CMP_ROUNDS times per target (default 3), the order
# of the targets reversed every other round; the table shows the median of
# each column over the rounds (the host is shared: single runs swing 2x).
ROUNDS="${SHARDBLK_CMP_ROUNDS:-3}"
: >"$W/rounds.txt"
printf '%-20s %-10s %9s %8s %9s %9s %8s %8s %9s\n' WORKLOAD TARGET IOPS MB/s p50us p99us IOPS/ru p99/ru cpuus/io
jobs="${SHARDBLK_CMP_JOBS:-randread:4k:1,randread:4k:32,randwrite:4k:1,randwrite:4k:32,read:1M:4}"
for job in ${jobs//,/ }; do
    set -- ${job//:/ }
    declare -A res=()
    order="$targets"
    for r in $(seq "$ROUNDS"); do
        for t in $order; do
            case $t in
                rublk | rublkfl | rublkzc | rublknone) dev=${rdev[$t]} ;; loop) dev=$lo ;; shardblk) dev=$sb ;; before) dev=$bb ;;
                *) dev=${vdev[$t]} ;;
            esac
            res[$t]="${res[$t]:-}$(run_fio "$dev" "$1" "$2" "$3" "${dpid[$t]:-}" "$W/bins-$t");"
        done
        order="$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')"
    done
    med() { # "a b c d e;a b c d e;..." -> medians of the five columns ("-" where none)
        python3 -c '
import statistics, sys
rows = [r.split() for r in sys.argv[1].split(";") if r.strip()]
def m(i):
    v = [float(r[i]) for r in rows if r[i] != "-"]
    return f"{statistics.median(v):.1f}" if v else "-"
print(" ".join(m(i) for i in range(5)))' "$1"
    }
    read -r ri rb rp50 rp99 rcpu <<<"$(med "${res[rublk]}")"
    for t in $(echo "$targets" | tr ' ' '\n' | tac); do
        read -r i b p50 p99 cpu <<<"$(med "${res[$t]}")"
        printf '%-20s %-10s %9.0f %8s %9s %9s %8s %8s %9s\n' "$1 $2 QD$3" "$t" "$i" "$b" "$p50" "$p99" \
            "$(python3 -c "print(f'{$i/$ri:.2f}')")" "$(python3 -c "print(f'{$p99/$rp99:.2f}')")" "$cpu"
    done
    # Every round's IOPS and p99, in run order, for judging the spread behind a median.
    for t in $(echo "$targets" | tr ' ' '\n' | tac); do
        echo "${res[$t]}" | tr ';' '\n' | awk -v j="$1 $2 QD$3" -v t="$t" \
            'NF { r = r " " int($1); q = q " " int($4) } END { printf "#  %-17s %-10s rounds:%s  p99us:%s\n", j, t, r, q }' >>"$W/rounds.txt"
    done
    # p99 of all rounds' completions pooled (every round's fio histogram
    # summed): one estimate over ROUNDS x the samples of a round, steadier
    # than the median of per-round p99s; and the per-round paired p99 ratios
    # (each round's shardblk p99 over the same round's rublk p99).
    python3 - "$W" "$1 $2 QD$3" $targets <<'PY' >>"$W/rounds.txt"
import json, statistics, sys
w, job, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
def rounds(t):
    with open(f"{w}/bins-{t}") as f:
        return [{int(k): v for k, v in json.loads(l).items()} for l in f if l.strip()]
def pct(h, q):
    n = sum(h.values())
    if n == 0:
        return float("nan")
    need, seen = q * n, 0
    for k in sorted(h):
        seen += h[k]
        if seen >= need:
            return k / 1000
    return max(h) / 1000
pooled, per = {}, {}
for t in targets:
    rs = rounds(t)
    h = {}
    for r in rs:
        for k, v in r.items():
            h[k] = h.get(k, 0) + v
    pooled[t] = h
    per[t] = [pct(r, 0.99) for r in rs]
ru = pooled.get("rublk")
for t in targets:
    line = f"#  {job:<17} {t:<10} pooled p50us {pct(pooled[t], 0.5):.0f} p99us {pct(pooled[t], 0.99):.0f} p99.9us {pct(pooled[t], 0.999):.0f}"
    if ru and t != "rublk":
        ratio = pct(pooled[t], 0.99) / pct(ru, 0.99)
        paired = [a / b for a, b in zip(per[t], per["rublk"])]
        below = sum(1 for x in paired if x < 1)
        line += f"  pooled p99/ru {ratio:.2f}  paired p99/ru median {statistics.median(paired):.2f} ({below} of {len(paired)} rounds below 1)"
    # like for like: zero copy against rublk's zero copy (`-z`)
    if "rublkzc" in pooled and not t.startswith("rublk") and t != "loop":
        line += f"  pooled p99/ru-zc {pct(pooled[t], 0.99) / pct(pooled['rublkzc'], 0.99):.2f}"
    print(line)
PY
    rm -f "$W"/bins-*
    unset res
done
cat "$W/rounds.txt"
# SHARDBLK_CMP_PROFILE=1: where each daemon's CPU goes at 4 KiB randread
# QD32 (perf, cpu-clock samples of every thread, 4 s each); the top of each
# report is printed, the full reports go to $SHARDBLK_VM_OUT.
if [ "${SHARDBLK_CMP_PROFILE:-0}" = 1 ]; then
    for t in shardblk rublk; do
        dev=$sb
        [ "$t" = rublk ] && dev=${rdev[rublk]}
        perf record -q -e cpu-clock -F 2000 -g -p "${dpid[$t]}" -o "$W/perf-$t.data" -- sleep 5 &
        prec=$!
        sleep 0.5
        run_fio "$dev" randread 4k 32 >/dev/null
        wait "$prec" || true
        perf report -i "$W/perf-$t.data" --stdio --no-children --percent-limit 1.5 -g none \
            >"$SHARDBLK_VM_OUT/perf-$t.txt" 2>/dev/null || true
        echo "## perf: $t, randread 4k QD32 (samples by function, >= 1.5 %)"
        grep -v '^#' "$SHARDBLK_VM_OUT/perf-$t.txt" | grep -v '^$' | head -25
    done
fi
"$B" stats -n 3
