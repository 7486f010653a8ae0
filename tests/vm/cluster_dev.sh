#!/usr/bin/env bash
# tests/vm/cluster_dev.sh: /dev/ublkbN over a cluster volume. Three
# `shardblk node run` processes on loopback (file-backed pools on the guest
# tmpfs), `shardblk add --seed ...` of a 64 MiB cluster volume with R = 2 and
# two queues; fio write-then-verify (verify=crc32c); a node is killed (-9) in
# the middle of a verify job and restarted while it runs: zero verify errors;
# a verify-only pass over everything once the node is back; stats show the
# requests under the hit class `remote`; `del`. Then (information only, TCG)
# fio randread 4K at QD 1 and 16 on the cluster device and on a local-volume
# device in the same guest. Then the volume attached again with a stage tier
# (see stage_tier_steps; SHARDBLK_CLUSTER_DEV_ONLY=stage runs those alone).
. "$(dirname "$0")/lib.sh"

ip link set lo up 2>/dev/null || true
die() {
    printf 'FAIL: %s\n' "$*" >&2
    [ -f "$SHARDBLK_RUN_DIR/shardblk.log" ] && tail -n 30 "$SHARDBLK_RUN_DIR/shardblk.log" >&2
    for f in "$W"/node*.log; do [ -f "$f" ] && { echo "-- $f" >&2; tail -n 8 "$f" >&2; }; done
    exit 1
}
declare -A NODE_PID
stop_nodes() {
    local i
    for i in "${!NODE_PID[@]}"; do kill -9 "${NODE_PID[$i]}" 2>/dev/null || true; done
}
trap 'cleanup; stop_nodes' EXIT

SEEDS=()
for i in 0 1 2; do SEEDS+=(--seed "127.0.0.1:$((7200 + i))"); done

start_node() {
    local i="$1"
    "$B" node run --id "node$i" --pool "$W/node$i.img" --listen "127.0.0.1:$((7100 + i))" \
        --gossip "127.0.0.1:$((7200 + i))" "${SEEDS[@]}" >>"$W/node$i.log" 2>&1 &
    NODE_PID[$i]=$!
}

# progress while a job runs: request counts and the daemon's warnings
progress() {
    while sleep 15; do
        "$B" stats -n "$n" --json 2>/dev/null | python3 -c '
if 1:
    import json, sys
    t = json.load(sys.stdin)["total"]
    print("   .. " + ", ".join("%s %d" % (o["op"], o["count"]) for o in t["ops"]) + ", errors %d" % t["errors"])
' 2>/dev/null || true
        grep -h WARN "$SHARDBLK_RUN_DIR/shardblk.log" 2>/dev/null | tail -n 2 | cut -c1-200
    done
}

fio_json_ok() { # NAME JSON: zero errors and some verify reads
    python3 - "$1" "$2" <<'PY'
import json, sys
name = sys.argv[1]
j = json.load(open(sys.argv[2]))["jobs"][0]
errs = j.get("error", 0) + j.get("total_err", 0)
w, rd = j["write"], j["read"]
print(f"   {name}: {w['total_ios']} writes ({w['iops']:.0f} IOPS), {rd['total_ios']} verify reads, errors {errs}")
sys.exit(1 if errs or rd["total_ios"] == 0 else 0)
PY
}

step "three storage nodes on loopback (128 MiB file pools)"
for i in 0 1 2; do
    truncate -s 128M "$W/node$i.img"
    "$B" pool init --tier "hot=$W/node$i.img" >/dev/null
    start_node "$i"
done

# Remote staging (issue 5): the volume attached again with a stage tier;
# demand promotion (--prefetch none --prefetch-promote 1) stages the shards
# read; fio writes then verifies twice over a 2 MiB region (the second job
# overwrites every block of the staged shards with new data, its verify
# reads must see it), verify-only passes in between; stats show reads
# served from the stage tier (`read/hot`, prefetch.remote.local_reads).
stage_tier_steps() {
    step "stage tier: add with --stage-tier (16 MiB file) --prefetch none --prefetch-promote 1"
    truncate -s 16M "$W/stage.img"
    sdev="$("$B" add --volume cvol "${SEEDS[@]}" --size 64M --replicas 2 --nodes 3 --queues 2 \
        --cpus 0-1 --depth 32 --stage-tier "$W/stage.img" --prefetch none --prefetch-promote 1 \
        2>"$W/sadd.err")" || die "add with a stage tier failed: $(cat "$W/sadd.err")"
    wait_dev "$sdev"
    sn="${sdev#/dev/ublkb}"
    STAGE=(--name=stage --filename="$sdev" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k
        --iodepth=8 --size=2M --offset=40M --verify=crc32c --verify_fatal=1 --verify_state_save=0)
    t0=$SECONDS
    (cd "$W" && timeout 300 fio "${STAGE[@]}" --do_verify=1 --output-format=json >"$W/stage1.json") ||
        die "fio stage write+verify failed"
    fio_json_ok stage "$W/stage1.json" || die "fio stage job reported errors"
    echo "   took $((SECONDS - t0)) s"
    sleep 3 # the verify reads promoted the two shards: let the fetches land
    (cd "$W" && timeout 300 fio "${STAGE[@]}" --verify_only >"$W/sv1.out" 2>&1) ||
        die "verify-only after staging failed: $(tail -5 "$W/sv1.out")"
    step "stage tier: overwrite the staged shards with new data, verify (no stale read)"
    (cd "$W" && timeout 300 fio "${STAGE[@]}" --randseed=4242 --do_verify=1 --output-format=json \
        >"$W/stage2.json") || die "fio overwrite of staged shards failed"
    fio_json_ok overwrite "$W/stage2.json" || die "stale data after overwriting staged shards"
    (cd "$W" && timeout 300 fio "${STAGE[@]}" --randseed=4242 --verify_only >"$W/sv2.out" 2>&1) ||
        die "verify-only after the overwrite failed: $(tail -5 "$W/sv2.out")"
    sleep 0.5
    "$B" stats -n "$sn" --json | python3 -c '
if 1:
    import json, sys
    j = json.load(sys.stdin)
    t = j["total"]
    hits = {(o["op"], o["hit"]): o["count"] for o in t["hits"]}
    r = j["prefetch"]["remote"]
    assert hits.get(("read", "hot"), 0) > 0, hits
    assert r["local_reads"] > 0 and r["stager"]["staged"] >= 1 and r["updated"] > 0, r
    assert t["errors"] == 0, t
    print("   stats:", {f"{k[0]}/{k[1]}": v for k, v in hits.items()})
    print("   staging:", {k: r[k] for k in ("local_reads", "remote_reads", "lease_expired", "fetches", "spoiled", "updated", "invalidated")}, "staged", r["stager"]["staged"])
' || die "stage stats wrong: $("$B" stats -n "$sn" --json | head -c 3000)"
    dmesg | grep -i "I/O error" | grep ublkb && die "the kernel logged I/O errors on the device"
    "$B" del -n "$sn"
}
if [ "${SHARDBLK_CLUSTER_DEV_ONLY:-}" = stage ]; then
    # let the freshly started (debug, TCG) nodes settle first: right after
    # their start the daemon's gossip view may see them all down
    sleep 20
    stage_tier_steps
    echo "PASS cluster_dev (stage tier steps only)"
    exit 0
fi

step "zero copy is refused for a cluster volume"
if "$B" add --volume cvol "${SEEDS[@]}" --size 64M --zero-copy on 2>"$W/zc.err"; then
    die "add --zero-copy on of a cluster volume succeeded"
fi
grep -q "user memory" "$W/zc.err" || die "no clear zero-copy refusal: $(cat "$W/zc.err")"

step "add the cluster volume (64 MiB, R=2, 3 nodes) with 2 queues"
dev="$(SHARDBLK_LOG=shardblk=info "$B" add --volume cvol "${SEEDS[@]}" --size 64M --replicas 2 --nodes 3 \
    --queues 2 --cpus 0-1 --depth 32 2>"$W/add.err")" || die "add failed: $(cat "$W/add.err")"
grep -q "zero copy not used" "$W/add.err" || die "no zero-copy fallback message: $(cat "$W/add.err")"
wait_dev "$dev"
n="${dev#/dev/ublkb}"
"$B" list
[ "$(blockdev --getsize64 "$dev")" = $((64 << 20)) ] || die "device size is not 64 MiB"

# Small jobs: every request is a replicated round trip through debug-built
# node processes in a TCG guest.
SEQ=(--name=seq --filename="$dev" --direct=1 --ioengine=io_uring --rw=write --bs=128k --iodepth=4
    --size=2M --offset=56M --verify=crc32c --verify_fatal=1 --verify_state_save=0)
CRASH=(--name=crash --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k
    --iodepth=16 --size=1M --offset=0 --verify=crc32c --verify_fatal=1 --verify_state_save=0)
step "sequential 128k writes then verify (QD 4), 2 MiB crossing a shard boundary"
progress &
prog=$!
t0=$SECONDS
(cd "$W" && timeout 300 fio "${SEQ[@]}" --do_verify=1 --output-format=json >"$W/seq.json") || die "fio seq failed"
echo "   took $((SECONDS - t0)) s"
fio_json_ok seq "$W/seq.json" || die "fio seq reported errors"

step "random 4k writes then verify (QD 16); kill -9 node1 mid-job, restart it"
writes() {
    "$B" stats -n "$n" --json | python3 -c 'import json, sys
print(sum(o["count"] for o in json.load(sys.stdin)["total"]["hits"] if o["op"] == "write"))'
}
w0="$(writes)"
(cd "$W" && timeout 400 fio "${CRASH[@]}" --do_verify=1 --output-format=json >"$W/crash.json") &
fio_pid=$!
t0=$SECONDS
# kill the node once the job is under way (a quarter of its 256 writes
# acknowledged), however fast the guest runs it (a fixed delay let a quick
# run finish first)
for _ in $(seq 1 300); do
    [ "$(writes)" -ge $((w0 + 64)) ] && break
    kill -0 "$fio_pid" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$fio_pid" 2>/dev/null || die "fio ended before the kill; make the job longer"
kill -9 "${NODE_PID[1]}"
echo "   node1 killed"
sleep 6
kill -0 "$fio_pid" 2>/dev/null && echo "   fio still running: restarting node1" ||
    echo "   fio ended while node1 was down: restarting node1"
start_node 1
wait "$fio_pid" || die "fio failed with a node killed: $(tail -c 2000 "$W/crash.json")"
fio_json_ok crash "$W/crash.json" || die "fio crash job reported errors"
echo "   took $((SECONDS - t0)) s"

step "verify-only pass over the whole volume with node1 back"
sleep 2
t0=$SECONDS
(cd "$W" && timeout 300 fio "${SEQ[@]}" --verify_only >"$W/vseq.out" 2>&1) ||
    die "verify-only of the seq job's region failed ($((SECONDS - t0)) s): $(tail -5 "$W/vseq.out")"
echo "   seq region verified in $((SECONDS - t0)) s"
t0=$SECONDS
(cd "$W" && timeout 300 fio "${CRASH[@]}" --verify_only >"$W/vcrash.out" 2>&1) ||
    die "verify-only of the crash job's region failed ($((SECONDS - t0)) s): $(grep -i "err\|verify" "$W/vcrash.out" | head -5)"
echo "   crash region verified in $((SECONDS - t0)) s"
dmesg | grep -i "I/O error" | grep ublkb && die "the kernel logged I/O errors on the device"

kill "$prog" 2>/dev/null || true
step "stats: reads and writes under the hit class remote, no errors"
sleep 0.5
"$B" stats -n "$n" --json | python3 -c '
if 1:
    import json, sys
    t = json.load(sys.stdin)["total"]
    hits = {(o["op"], o["hit"]): o["count"] for o in t["hits"]}
    assert hits.get(("read", "remote"), 0) > 0 and hits.get(("write", "remote"), 0) > 0, hits
    assert t["errors"] == 0, t
    print("   stats:", {f"{k[0]}/{k[1]}": v for k, v in hits.items()})
' || die "stats wrong"

step "idle queue threads sleep (interrupt mode): CPU time over 3 s"
pid="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$SHARDBLK_RUN_DIR/ublkb$n.json")"
tids="$(python3 -c 'import json,sys; print(" ".join(map(str, json.load(open(sys.argv[1]))["queue_tids"])))' "$SHARDBLK_RUN_DIR/ublkb$n.json")"
ticks() { local t s=0; for t in $tids; do s=$((s + $(awk '{print $14 + $15}' "/proc/$pid/task/$t/stat"))); done; echo "$s"; }
a="$(ticks)"; sleep 3; b="$(ticks)"
echo "   queue threads used $((b - a)) ticks in 3 s"
[ $((b - a)) -le 30 ] || die "idle queue threads use CPU ($((b - a)) ticks in 3 s): the wake-up read spins"

step "randread 4k on the cluster device vs a local volume (TCG: information only)"
make_pool 128M 128M
"$B" volume create lvol --size 64M >/dev/null
ldev="$("$B" add --volume lvol --queues 2 --cpus 0-1 --depth 32 --zero-copy off 2>/dev/null)"
wait_dev "$ldev"
dd if=/dev/urandom of="$ldev" bs=1M count=2 seek=56 oflag=direct status=none
randread() { # DEV QD -> "IOPS p50_us p99_us"
    (cd "$W" && fio --name=rr --filename="$1" --direct=1 --ioengine=io_uring --rw=randread --bs=4k \
        --iodepth="$2" --size=2M --offset=56M --time_based --runtime=4 --output-format=json) |
        python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; p=r["clat_ns"]["percentile"]; print("%.0f %.0f %.0f" % (r["iops"], p["50.000000"]/1e3, p["99.000000"]/1e3))'
}
for qd in 1 16; do
    c="$(randread "$dev" "$qd")" || die "randread on the cluster device"
    l="$(randread "$ldev" "$qd")" || die "randread on the local device"
    echo "   randread 4k QD $qd: cluster IOPS/p50us/p99us $c | local $l"
done
"$B" del -n "${ldev#/dev/ublkb}"

step "del"
"$B" del -n "$n"
[ -e "$SHARDBLK_RUN_DIR/ublkb$n.json" ] && die "record left after del"
stage_tier_steps
for i in 0 1 2; do kill -0 "${NODE_PID[$i]}" 2>/dev/null || die "node$i died: $(tail -5 "$W/node$i.log")"; done
echo "PASS cluster_dev"
