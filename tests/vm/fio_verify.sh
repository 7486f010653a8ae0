#!/usr/bin/env bash
# tests/vm/fio_verify.sh: fio write-then-verify (verify=crc32c) on /dev/ublkbN,
# random and sequential, with two queues; zero errors expected; in copy mode
# and, when the kernel has UBLK_F_AUTO_BUF_REG, in zero-copy mode. Prints IOPS
# (TCG: for information only).
. "$(dirname "$0")/lib.sh"

fio_verify() {
    local name="$1"
    shift
    local json
    json="$(cd "$W" && fio --name="$name" --filename="$dev" --output-format=json --direct=1 \
        --ioengine=io_uring --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --verify_state_save=0 "$@")" || die "fio $name failed: $json"
    printf '%s' "$json" >"$W/$name.json"
    python3 - "$name" "$W/$name.json" <<'PY' || die "fio $name reported errors"
import json, sys
name = sys.argv[1]
r = json.load(open(sys.argv[2]))
j = r["jobs"][0]
errs = j.get("error", 0) + j.get("total_err", 0)
w, rd = j["write"], j["read"]
print(f"   {name}: write {w['iops']:.0f} IOPS {w['bw']/1024:.1f} MiB/s, verify-read {rd['iops']:.0f} IOPS, "
      f"{w['total_ios']} writes {rd['total_ios']} verify reads, errors {errs}")
sys.exit(1 if errs or rd["total_ios"] == 0 else 0)
PY
}

suite() {
    local zc="$1"
    step "[$zc] pool, 1 GiB thin volume with 256 KiB shards, 2 queues on CPUs 0-1"
    make_pool 128M 1G
    "$B" volume create fvol --size 1G --shard-size 256K >/dev/null
    dev="$("$B" add --volume fvol --queues 2 --depth 32 --cpus 0-1 --zero-copy "$zc" 2>/dev/null)"
    wait_dev "$dev"
    n="${dev#/dev/ublkb}"
    # (grep reads everything: `grep -q` could exit first and fail the writer with EPIPE)
    "$B" list --json | grep "\"zero_copy\": $([ "$zc" = on ] && echo true || echo false)" >/dev/null ||
        die "list does not show zero_copy for --zero-copy $zc"
    step "random 4k writes then verify (QD 16)"
    fio_verify rand4k --rw=randwrite --bs=4k --iodepth=16 --size=64M --offset=0
    step "random mixed sizes 4k-256k then verify (QD 8)"
    fio_verify randmix --rw=randwrite --bsrange=4k-256k --iodepth=8 --size=96M --offset=256M
    step "sequential 1M writes then verify (QD 4), crossing shards"
    fio_verify seq1m --rw=write --bs=1M --iodepth=4 --size=128M --offset=512M
    step "sequential 128k writes with FUA-free flushes (fsync=8)"
    fio_verify seqsync --rw=write --bs=128k --iodepth=1 --size=32M --offset=700M --fsync=8

    step "unwritten space reads as zeros"
    cmp <(dd if="$dev" bs=1M skip=900 count=4 iflag=direct status=none) <(head -c 4M /dev/zero) ||
        die "unwritten range not zero"

    step "stats (by op and by tier hit)"
    sleep 0.5 # one publish period
    "$B" stats -n "$n"
    "$B" stats -n "$n" --json | python3 -c '
if 1:
    import json, sys
    s = json.load(sys.stdin)
    assert len(s["queues"]) == 2, s["queues"]
    t = s["total"]
    ops = {o["op"]: o for o in t["ops"]}
    assert ops["write"]["count"] > 0 and ops["read"]["count"] > 0, ops
    assert t["errors"] == 0, t
    hits = {(o["op"], o["hit"]): o for o in t["hits"]}
    # the holes read above, and the first writes of this thin volume
    assert hits[("read", "unmapped")]["count"] >= 4, hits.keys()
    assert hits[("write", "unmapped")]["count"] > 0, hits.keys()
    assert any(h in hits for h in [("write", "hot"), ("write", "cold")]), hits.keys()
    for op in ("read", "write"):
        assert sum(o["count"] for (p, _), o in hits.items() if p == op) == ops[op]["count"], op
    ' || die "stats wrong"

    step "stats --watch: per-interval figures while fio reads; HDR logs"
    reads_now() {
        "$B" stats -n "$n" --json >"$W/now.json" || return 1
        python3 -c 'import json,sys; print(sum(o["count"] for o in json.load(open(sys.argv[1]))["total"]["ops"] if o["op"] == "read"))' "$W/now.json"
    }
    local r0
    r0="$(reads_now)" || die "stats before fio failed"
    (cd "$W" && fio --name=w --filename="$dev" --direct=1 --ioengine=io_uring --rw=randread --bs=4k \
        --iodepth=4 --size=64M --time_based --runtime=120 >/dev/null) &
    local fpid=$!
    # fio starts slowly in a loaded TCG guest: watch only once its reads show.
    local i
    for i in $(seq 100); do
        [ "$(reads_now)" -gt "$r0" ] && break
        sleep 0.2
    done
    "$B" stats -n "$n" --watch --interval 0.5 --count 3 --json --hdr-log "$W/watch.hlog" >"$W/watch.json" ||
        die "stats --watch failed"
    # Each shardblk process maps libtorch at start, which takes seconds under
    # TCG: fio runs until the watch is done, then stops.
    kill "$fpid" 2>/dev/null || true
    wait "$fpid" || true
    "$B" stats -n "$n" --hdr-log "$W/all.hlog" >/dev/null || die "stats --hdr-log failed"
    python3 - "$W/watch.json" "$W/watch.hlog" "$W/all.hlog" <<'PY' || die "stats --watch / --hdr-log wrong"
import base64, json, struct, sys, zlib
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 3, rows
# Each interval runs from one publish of the queues' snapshots to the next; the
# first starts at the last publish before the watch (longer when the device idled).
# Under a loaded TCG guest a 0.5 s watch can take seconds per turn, so check the
# interval against the daemon's own clock between two answers, not the wall.
for a, b in zip(rows, rows[1:]):
    gap = b["uptime_s"] - a["uptime_s"]
    ok = b["interval_s"] >= 0.2 and abs(b["interval_s"] - gap) <= 0.5 + 0.25 * gap
    assert ok, [(r["interval_s"], r["uptime_s"]) for r in rows]
assert all(r["interval_s"] < r["uptime_s"] for r in rows), rows
reads = [sum(o["iops"] for o in r["total"]["ops"] if o["op"] == "read") for r in rows]
assert max(reads) > 0, reads
# interval figures, not totals: no interval holds more reads than fio could do in it
for r in rows:
    n = sum(o["count"] for o in r["total"]["ops"] if o["op"] == "read")
    assert n < 1e6, n
def hlog(path):
    tags, n = set(), 0
    for line in open(path):
        if line.startswith("#") or line.startswith('"'):
            continue
        f = line.strip().split(",")
        tag = f[0][4:] if f[0].startswith("Tag=") else None
        raw = base64.b64decode(f[-1])
        cookie, length = struct.unpack(">ii", raw[:8])
        assert cookie & ~0xF0 == 0x1C849304 & ~0xF0, hex(cookie)  # V2 compressed
        inner = zlib.decompress(raw[8:8 + length])
        assert struct.unpack(">i", inner[:4])[0] & ~0xF0 == 0x1C849303 & ~0xF0
        tags.add(tag); n += 1
    return tags, n
wt, wn = hlog(sys.argv[2])
at, an = hlog(sys.argv[3])
assert "all/read/hot" in wt or "all/read/cold" in wt, wt
assert "all/write/unmapped" in at and ("q0/read/unmapped" in at or "q1/read/unmapped" in at), at
print(f"   watch: read IOPS per interval {[round(x) for x in reads]}, HDR log {wn} + {an} histograms")
PY
    "$B" del -n "$n"
}

# An orderly stop (del) keeps writes that were never flushed: the daemon
# commits on its way out, as a disk flushes its cache on shutdown.
orderly_stop() {
    step "orderly stop keeps unflushed writes"
    make_pool 256M 256M
    "$B" volume create keep --size 1G --shard-size 1M >/dev/null
    dev="$("$B" add --volume keep -n 7)" || die "add"
    wait_dev "$dev"
    (cd "$W" && fio --name=keep --filename="$dev" --direct=1 --ioengine=io_uring --rw=write --bs=64k \
        --size=48M --verify=crc32c --do_verify=0 >/dev/null) || die "fio write"
    "$B" del -n 7
    mapped="$("$B" volume inspect keep --json | python3 -c 'import json,sys; print(sum(m[1] for m in json.load(sys.stdin)["mapped_bytes"]))')"
    [ "$mapped" -ge $((48 << 20)) ] || die "after del only $mapped bytes mapped"
    dev="$("$B" add --volume keep -n 7)" || die "re-add"
    wait_dev "$dev"
    (cd "$W" && fio --name=keep --filename="$dev" --direct=1 --ioengine=io_uring --rw=write --bs=64k \
        --size=48M --verify=crc32c --verify_only --verify_fatal=1 >/dev/null) || die "verify after re-add"
    "$B" del -n 7
}
orderly_stop

# Every poll mode serves I/O: busy and adaptive spin on the queue's ring,
# which runs the kernel's deferred task work (the ublk commands) only when
# entered for completions.
poll_modes() {
    local poll
    make_pool 128M 128M
    "$B" volume create pvol --size 256M --shard-size 256K >/dev/null
    for poll in busy adaptive interrupt; do
        step "--poll $poll: random 4k writes then verify (QD 8)"
        dev="$("$B" add --volume pvol -n 8 --queues 1 --cpus 1 --poll "$poll" 2>/dev/null)" ||
            die "add --poll $poll"
        wait_dev "$dev"
        "$B" list --json | grep "\"poll\": \"$poll\"" >/dev/null || die "list does not show --poll $poll"
        grep -q '\[none\]' /sys/block/ublkb8/queue/scheduler ||
            die "default I/O scheduler is not none: $(cat /sys/block/ublkb8/queue/scheduler)"
        fio_verify "poll_$poll" --rw=randwrite --bs=4k --iodepth=8 --size=16M --offset=0
        "$B" del -n 8
    done
}
poll_modes

# --io-scheduler: `none` by default (checked above), another on request, the
# kernel's with `kernel`; a malformed name is refused before anything exists,
# and a name the kernel lacks leaves the kernel's with a warning.
schedulers() {
    local s
    for s in mq-deadline kernel; do
        step "--io-scheduler $s: random 4k writes then verify (QD 8)"
        dev="$("$B" add --volume pvol -n 8 --queues 1 --cpus 1 --io-scheduler "$s" 2>/dev/null)" ||
            die "add --io-scheduler $s"
        wait_dev "$dev"
        # One queue: the kernel's choice is mq-deadline too.
        grep -q '\[mq-deadline\]' /sys/block/ublkb8/queue/scheduler ||
            die "--io-scheduler $s: $(cat /sys/block/ublkb8/queue/scheduler)"
        "$B" list --json | grep '"scheduler": "mq-deadline"' >/dev/null ||
            die "list does not show the scheduler in use"
        fio_verify "sched_$s" --rw=randwrite --bs=4k --iodepth=8 --size=16M --offset=0
        "$B" del -n 8
    done
    step "--io-scheduler 'No Such' is refused, nothing created"
    if "$B" add --volume pvol -n 8 --io-scheduler 'No Such' 2>"$W/sched.err"; then
        die "a malformed scheduler name was accepted"
    fi
    grep -q "invalid I/O scheduler name" "$W/sched.err" || die "unclear refusal: $(cat "$W/sched.err")"
    [ ! -e /sys/class/ublk-char/ublkc8 ] || die "a refused add left /dev/ublkc8"
    step "--io-scheduler nosuch: the disk keeps the kernel's, with a warning"
    dev="$("$B" add --volume pvol -n 8 --queues 1 --cpus 1 --io-scheduler nosuch 2>"$W/sched.err")" ||
        die "add --io-scheduler nosuch failed: $(cat "$W/sched.err")"
    wait_dev "$dev"
    grep -q 'I/O scheduler "nosuch" not set on /dev/ublkb8' "$W/sched.err" ||
        die "no warning for a scheduler the kernel lacks: $(cat "$W/sched.err")"
    grep -q '\[mq-deadline\]' /sys/block/ublkb8/queue/scheduler || die "nosuch changed the scheduler"
    "$B" del -n 8
}
schedulers

suite off
if "$B" features | grep -w AUTO_BUF_REG >/dev/null; then
    suite on
else
    echo "== kernel without UBLK_F_AUTO_BUF_REG: zero-copy suite skipped"
fi
echo "PASS fio_verify"
