#!/usr/bin/env bash
# The guest half of bench/prefetch_replay.sh (runs in the test VM as root).
#
# Cold tier: a loop device over a tmpfs file behind dm-delay (SHARDBLK_PF_COLD_MS ms
# per read and write, default 8: HDD-like). Hot tier: a tmpfs file. A 256 MiB
# volume with SHARDBLK_PF_SHARD shards (default 1M) is written on the cold tier
# (the tier policy's promotion off except in the `policy` row),
# fresh for every run.
# 1. Replays (fio read_iolog, QD1) of: the first 2000 requests of the FIU
#    homes trace (../shared/traces, 85 % sequential; back to back) and a
#    synthetic `repeated` trace (a random sequence of 375 64 KiB reads run 4
#    times, about 21 ms apart on average: replayed with its timing as fio
#    `wait`s unless SHARDBLK_PF_TIMING=0), offsets folded into the volume; with prefetch off, readahead, markov and
#    lstm when this build has it (with the stager's demand promotion, and
#    readahead without it), `none` (demand promotion alone), `policy` (no
#    stager: the tier policy's windowed promotion, SHARDBLK_PF_PROMOTE reads
#    per window, watermarks holding it to a quarter of the hot tier), and
#    dm-cache (smq) over the same cold
#    latency with a cache the size of the stager's budget. One table: mean
#    and p99 read latency, what the stager did (dm-cache: promotions, read
#    hits, read hit ratio).
# 2. A purely random workload (fio randread 4 KiB QD16, SHARDBLK_PF_RANDOM_SECS
#    seconds, default 8) with prefetch
#    off and each predictor, SHARDBLK_PF_ROUNDS paired rounds (default 4):
#    IOPS, the ratio to the same round's off, the daemon's CPU seconds.
# SHARDBLK_PF_TRACE_NAMES="fiu-homes" picks part 1's traces,
# SHARDBLK_PF_RANDOM_ROWS="off lstm/np" part 2's rows (default: off and
# every predictor without demand promotion).
# Per row, $SHARDBLK_VM_OUT/rows/ keeps the daemon's stats, its threads'
# CPU seconds and the guest CPUs' busy share during the replay.
# SHARDBLK_PF_ONLY=random runs part 2 alone, =replay part 1 alone;
# SHARDBLK_PF_ROWS="off none readahead/np dm-cache ..." picks part 1's rows
# (`X`: --prefetch X with demand promotion after SHARDBLK_PF_PROMOTE cold
# reads, default 2; `X/np`: without it; `lstm@K`: lstm with --lstm-lookahead K;
# SHARDBLK_PF_LSTM_FLAGS="--lstm-no-online ..." are added to every lstm row;
# `policy`: no stager, the tier policy's windowed promotion).
. "$(dirname "$0")/../tests/vm/lib.sh"
COLD_MS="${SHARDBLK_PF_COLD_MS:-8}"
TRACES="${SHARDBLK_PF_TRACES:-/work/shared/traces}"
VOL=256M
SHARD="${SHARDBLK_PF_SHARD:-1M}"
OUT="${SHARDBLK_VM_OUT:-$W}"

rm -f "$W/cold.img" "$W/hot.img" "$W/origin.img" "$W/cache.img" "$W/cmeta.img" # a scratch dir another script used
truncate -s 512M "$W/cold.img"
loop="$(losetup -f --show "$W/cold.img")" || die "losetup"
sectors="$(blockdev --getsz "$loop")"
dmsetup create pfcold --table "0 $sectors delay $loop 0 $COLD_MS $loop 0 $COLD_MS" || die "dmsetup"
dmsetup mknodes
cold=/dev/mapper/pfcold
[ -b "$cold" ] || die "no $cold"
cleanup_all() {
    cleanup
    dmsetup remove pfcache 2>/dev/null || true
    dmsetup remove pforigin 2>/dev/null || true
    dmsetup remove pfcold 2>/dev/null || true
    losetup -D 2>/dev/null || true
}
trap cleanup_all EXIT
rm -f "$W/hot.img"
truncate -s 256M "$W/hot.img"
"$B" pool init --tier hot="$W/hot.img" --tier cold="$cold" >/dev/null || die "pool init"
export SHARDBLK_POOL="$W/hot.img"

# The kernel's own tiering as a baseline: dm-cache (smq policy, writethrough)
# over an origin with the same dm-delay latency, its cache on a tmpfs file as
# large as the stager's budget (a quarter of shardblk's hot tier), cache
# blocks the size of a shard, made fresh (empty) for every replay.
to_bytes() { numfmt --from=iec "$1"; }
SHARD_B="$(to_bytes "$SHARD")"
CACHE_B=$(( $(stat -c %s "$W/hot.img") / 4 ))
dmcache=0
if modprobe dm_cache_smq 2>/dev/null || [ -d /sys/module/dm_cache_smq ]; then
    truncate -s 256M "$W/origin.img"
    dd if=/dev/urandom of="$W/origin.img" bs=1M count=256 conv=notrunc status=none
    oloop="$(losetup -f --show "$W/origin.img")"
    dmsetup create pforigin --table "0 $(blockdev --getsz "$oloop") delay $oloop 0 $COLD_MS $oloop 0 $COLD_MS"
    truncate -s "$CACHE_B" "$W/cache.img"
    truncate -s 16M "$W/cmeta.img"
    cloop="$(losetup -f --show "$W/cache.img")"
    mloop="$(losetup -f --show "$W/cmeta.img")"
    dmcache=1
else
    echo "dm-cache: no dm_cache_smq module in this guest (SHARDBLK_VM_EXTRA_MODULES), row skipped"
fi
fresh_dmcache() { # an empty cache over the origin -> /dev/mapper/pfcache
    dmsetup remove pfcache 2>/dev/null || true
    dd if=/dev/zero of="$mloop" bs=1M count=1 oflag=direct status=none
    dmsetup create pfcache --table "0 $(blockdev --getsz /dev/mapper/pforigin) cache $mloop $cloop \
/dev/mapper/pforigin $(( SHARD_B / 512 )) 1 writethrough smq 0" || die "dm-cache"
    dmsetup mknodes
}
dmcache_cols() { # -> "promotions read_hits hit_ratio -" from dm-cache's status
    dmsetup status pfcache | awk '{ h = $8; m = $9; printf "%s %s %.2f -\n", $13, h, (h + m) ? h / (h + m) : 0 }'
}

# Traces, as fio v2 iologs against /dev/ublkb0.
"$B" trace synth --kind repeated --events 1500 --io-size 64K --volume-size $VOL --seed 1 \
    -o "$W/repeated.csv" 2>/dev/null || die "synth"
traces=(repeated)
if [ -r "$TRACES/fiu_homes_cheetah_10k.csv.gz" ]; then
    (zcat "$TRACES/fiu_homes_cheetah_10k.csv.gz" || true) | head -n 2001 >"$W/fiu-homes.csv"
    traces=(fiu-homes repeated)
fi
if [ -n "${SHARDBLK_PF_TRACE_NAMES:-}" ]; then read -r -a traces <<<"$SHARDBLK_PF_TRACE_NAMES"; fi
for t in "${traces[@]}"; do
    # The synthetic trace keeps its think time (fio `wait`s): a job that
    # computes between reads, the time a prefetcher has to stage the next.
    timing=()
    [ "$t" = repeated ] && [ "${SHARDBLK_PF_TIMING:-1}" = 1 ] && timing=(--fio-timing)
    "$B" trace convert --from csv "$W/$t.csv" --to fio --fio-filename /dev/ublkb0 \
        --fio-wrap $VOL "${timing[@]}" -o "$W/$t.iolog" 2>/dev/null || die "convert $t"
    sed 's|/dev/ublkb0|/dev/mapper/pfcache|' "$W/$t.iolog" >"$W/$t.dmcache.iolog"
done

predictors=(off readahead markov)
if out="$("$B" add --volume nosuch -n 9 --prefetch lstm 2>&1)" || ! grep -q 'unknown predictor' <<<"$out"; then
    predictors+=(lstm)
else
    echo "lstm: not in this build ($out)"
fi
prefetch_args() { # predictor[@K][/np] (np: no demand promotion; lstm@K: --lstm-lookahead K)
    local p="${1%/np}" k=""
    [ "$p" = off ] && return 0
    if [ "${p#*@}" != "$p" ]; then
        k="${p#*@}"
        p="${p%@*}"
    fi
    printf '%s\n' --prefetch "$p"
    [ -n "$k" ] && printf '%s\n' --lstm-lookahead "$k"
    if [ "${1%/np}" != "$1" ]; then
        printf '%s\n' --prefetch-promote 0
    else
        printf '%s\n' --prefetch-promote "$PROMOTE_READS"
    fi
    [ "$p" = lstm ] && [ -n "${SHARDBLK_PF_LSTM_MODEL:-}" ] && printf '%s\n' --prefetch-model "$SHARDBLK_PF_LSTM_MODEL"
    # shellcheck disable=SC2086 # flags, one per word
    [ "$p" = lstm ] && [ -n "${SHARDBLK_PF_LSTM_FLAGS:-}" ] && printf '%s\n' $SHARDBLK_PF_LSTM_FLAGS
    return 0
}

fresh_volume() { # a volume written in full on the cold tier
    "$B" volume delete pvol >/dev/null 2>&1 || true
    "$B" volume create pvol --size $VOL --shard-size "$SHARD" --policy write=cold,promote=0 >/dev/null ||
        die "volume create"
    local dev
    dev="$("$B" add --volume pvol -n 0)" || die "add (fill)"
    wait_dev "$dev"
    (cd "$W" && fio --name=fill --filename="$dev" --rw=write --bs=1M --size=$VOL --direct=1 \
        --ioengine=io_uring --iodepth=8 --end_fsync=1 >/dev/null) || die "fill"
    "$B" del -n 0
}

start_dev() { # row (predictor[/np], or policy) -> /dev/ublkb0
    local dev p="$1"
    if [ "$p" = policy ]; then
        # no stager: the tier policy's own promotion (reads per 2 s
        # window), held to the stager's share of the hot tier by the
        # watermarks
        "$B" volume policy pvol "write=cold,promote=$PROMOTE_READS,high=25,low=20" >/dev/null ||
            die "volume policy"
        p=off
    fi
    mapfile -t args < <(prefetch_args "$p")
    dev="$("$B" add --volume pvol -n 0 "${args[@]}")" || die "add --prefetch $1"
    wait_dev "$dev"
}

# Per row, left in $OUT/rows/TRACE-ROW.txt: the daemon's prefetch stats
# (json), its threads' CPU seconds, and the guest's CPUs' busy share over
# the replay (a TCG vCPU that computes takes the host time of the other).
mkdir -p "$OUT/rows"
cpu_busy() { # -> "busy_ticks total_ticks" per cpu from /proc/stat, one line
    awk '/^cpu[0-9]/ { b = $2 + $3 + $4 + $7 + $8; t = b + $5 + $6; printf "%s %d %d ", $1, b, t }' /proc/stat
}
busy_share() { # BEFORE AFTER -> "cpu0 0.41 cpu1 0.12"
    python3 - "$1" "$2" <<'PY'
import sys
a, b = sys.argv[1].split(), sys.argv[2].split()
out = []
for i in range(0, len(a), 3):
    db, dt = int(b[i + 1]) - int(a[i + 1]), int(b[i + 2]) - int(a[i + 2])
    out.append("%s %.2f" % (a[i], db / dt if dt else 0))
print(" ".join(out))
PY
}
thread_cpu() { # -> "comm=seconds ..." for every thread of the device 0 daemon
    local pid
    pid="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$SHARDBLK_RUN_DIR/ublkb0.json")"
    python3 - "$pid" <<'PY'
import os, sys
pid = sys.argv[1]
hz = os.sysconf("SC_CLK_TCK")
acc = {}
for t in sorted(os.listdir(f"/proc/{pid}/task")):
    comm = open(f"/proc/{pid}/task/{t}/comm").read().strip()
    f = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()
    acc[comm] = acc.get(comm, 0) + int(f[11]) + int(f[12])
print(" ".join("%s=%.2f" % (k, v / hz) for k, v in sorted(acc.items()) if v))
PY
}

stats_cols() { # -> "staged hits precision coverage predictions"
    "$B" stats -n 0 --json | python3 -c '
if 1:
    import json, sys
    p = json.load(sys.stdin).get("prefetch")
    if not p:
        print("- - - - -")
    else:
        s = p["stager"]
        f = lambda x: "-" if x is None else "%.2f" % x
        print(s["staged"], s["hits"], f(s["precision"]), f(s["coverage"]), p["predictions"])
    '
}

{
    echo "cold tier: dm-delay ${COLD_MS} ms over loop (tmpfs); hot tier: tmpfs file; 256 MiB volume, $SHARD shards"
    printf '%-12s %-12s %6s %9s %9s %7s %7s %9s %9s\n' TRACE PREFETCH READS MEAN_ms P99_ms STAGED HITS PRECISION COVERAGE
} | tee "$OUT/prefetch_replay.txt"
[ "${SHARDBLK_PF_ONLY:-}" = random ] && traces=()
PROMOTE_READS="${SHARDBLK_PF_PROMOTE:-2}"
rows=(off policy none readahead readahead/np markov)
[[ " ${predictors[*]} " == *" lstm "* ]] && rows+=(lstm)
((dmcache)) && rows+=(dm-cache)
if [ -n "${SHARDBLK_PF_ROWS:-}" ]; then read -r -a rows <<<"$SHARDBLK_PF_ROWS"; fi
for t in "${traces[@]}"; do
    for p in "${rows[@]}"; do
        if [ "$p" = dm-cache ]; then
            fresh_dmcache
            (cd "$W" && fio --name=replay --read_iolog="$W/$t.dmcache.iolog" --ioengine=io_uring \
                --direct=1 --iodepth=1 --output-format=json >"$W/r.json") || die "replay $t $p"
            cols="$(dmcache_cols)"
        else
            fresh_volume
            start_dev "$p"
            c0="$(cpu_busy)"
            (cd "$W" && fio --name=replay --read_iolog="$W/$t.iolog" --ioengine=io_uring --direct=1 \
                --iodepth=1 --output-format=json >"$W/r.json") || die "replay $t $p"
            c1="$(cpu_busy)"
            sleep 0.5
            cols="$(stats_cols)"
            rowf="$OUT/rows/$t-${p//\//_}.txt"
            {
                echo "guest cpu busy during the replay: $(busy_share "$c0" "$c1")"
                echo "daemon threads cpu_s: $(thread_cpu)"
                "$B" stats -n 0 --json
            } >"$rowf" 2>&1 || true
            "$B" del -n 0
        fi
        lat="$(python3 - "$W/r.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["jobs"][0]["read"]
c = r["clat_ns"]
print(r["total_ios"], "%.2f" % (c["mean"] / 1e6), "%.2f" % (c["percentile"]["99.000000"] / 1e6))
PY
)"
        read -r n mean p99 <<<"$lat"
        read -r staged hits prec cov _ <<<"$cols"
        printf '%-12s %-12s %6s %9s %9s %7s %7s %9s %9s\n' "$t" "$p" "$n" "$mean" "$p99" \
            "$staged" "$hits" "$prec" "$cov" | tee -a "$OUT/prefetch_replay.txt"
    done
done

if [ "${SHARDBLK_PF_ONLY:-}" = replay ]; then
    echo "results in $OUT/prefetch_replay.txt"
    exit 0
fi
echo | tee -a "$OUT/prefetch_replay.txt"
# Paired rounds: every predictor once per round, the order reversed every
# other round; each round's IOPS is divided by the same round's `off`, so the
# guest's drift between rounds cancels. CPU: the daemon's user+system seconds
# over the run, its drain thread's (`shardblk-infer`) and its model
# thread's (`shardblk-model`, with the run acceptor's fit workers,
# `shardblk-accept`, that exist when the CPU is read) alone.
# The predictors' own cost: demand promotion off (it would promote the
# re-read shards of a random workload over a small volume, a different
# effect).
rrows=(off)
for p in "${predictors[@]:1}"; do rrows+=("$p/np"); done
if [ -n "${SHARDBLK_PF_RANDOM_ROWS:-}" ]; then read -r -a rrows <<<"$SHARDBLK_PF_RANDOM_ROWS"; fi
[ "${rrows[0]}" = off ] || die "SHARDBLK_PF_RANDOM_ROWS must start with off (the ratios' base)"
ROUNDS="${SHARDBLK_PF_ROUNDS:-4}"
RSECS="${SHARDBLK_PF_RANDOM_SECS:-8}"
cpu_cols() { # -> "daemon_cpu_s infer_cpu_s model_cpu_s" of the device 0 daemon
    local pid
    pid="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$SHARDBLK_RUN_DIR/ublkb0.json")"
    python3 - "$pid" <<'PY'
import os, sys
pid = sys.argv[1]
hz = os.sysconf("SC_CLK_TCK")
def ticks(path):
    f = open(path).read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime, stime
total = ticks(f"/proc/{pid}/stat")
of = {"shardblk-infer": 0, "shardblk-model": 0}
for t in os.listdir(f"/proc/{pid}/task"):
    comm = open(f"/proc/{pid}/task/{t}/comm").read().strip()
    comm = {"shardblk-accept": "shardblk-model"}.get(comm, comm)  # its fit workers
    if comm in of:
        of[comm] += ticks(f"/proc/{pid}/task/{t}/stat")
print("%.2f %.2f %.2f" % (total / hz, of["shardblk-infer"] / hz, of["shardblk-model"] / hz))
PY
}
printf '%-28s %-12s %9s %9s %7s %7s %9s %9s %9s\n' "RANDOM (randread 4k QD16 ${RSECS}s)" PREFETCH IOPS vs_off STAGED PREDICT CPU_s INFER_s MODEL_s | tee -a "$OUT/prefetch_replay.txt"
declare -A ratios=()
for round in $(seq "$ROUNDS"); do
    order=("${rrows[@]}")
    if (( round % 2 == 0 )); then
        order=()
        for ((i = ${#rrows[@]} - 1; i >= 0; i--)); do order+=("${rrows[$i]}"); done
    fi
    declare -A iops_of=() line_of=()
    for p in "${order[@]}"; do
        fresh_volume
        start_dev "$p"
        (cd "$W" && fio --name=rand --filename=/dev/ublkb0 --rw=randread --bs=4k --direct=1 \
            --ioengine=io_uring --iodepth=16 --time_based --runtime="$RSECS" --randseed=$round \
            --output-format=json >"$W/rand.json") || die "randread $p"
        cols="$(stats_cols)"
        cpu="$(cpu_cols)"
        {
            echo "daemon threads cpu_s: $(thread_cpu)"
            "$B" stats -n 0 --json
        } >"$OUT/rows/random-$round-${p//\//_}.txt" 2>&1 || true
        "$B" del -n 0
        iops_of[$p]="$(python3 -c 'import json,sys; print("%.0f" % json.load(open(sys.argv[1]))["jobs"][0]["read"]["iops"])' "$W/rand.json")"
        read -r staged _ _ _ npred <<<"$cols"
        read -r dcpu icpu mcpu <<<"$cpu"
        line_of[$p]="$staged $npred $dcpu $icpu $mcpu"
    done
    for p in "${rrows[@]}"; do
        r="$(python3 -c "print('%.3f' % (${iops_of[$p]} / ${iops_of[off]}))")"
        ratios[$p]="${ratios[$p]:-} $r"
        read -r staged npred dcpu icpu mcpu <<<"${line_of[$p]}"
        printf '%-28s %-12s %9s %9s %7s %7s %9s %9s %9s\n' "round $round" "$p" "${iops_of[$p]}" "$r" \
            "$staged" "$npred" "$dcpu" "$icpu" "$mcpu" | tee -a "$OUT/prefetch_replay.txt"
    done
done
for p in "${rrows[@]}"; do
    python3 - "$p" ${ratios[$p]} <<'PY' | tee -a "$OUT/prefetch_replay.txt"
import statistics, sys
p, r = sys.argv[1], sorted(float(x) for x in sys.argv[2:])
print("%-28s %-12s median vs off %.3f (min %.3f, max %.3f, %d rounds)"
      % ("paired ratio", p, statistics.median(r), r[0], r[-1], len(r)))
PY
done
echo "results in $OUT/prefetch_replay.txt"
