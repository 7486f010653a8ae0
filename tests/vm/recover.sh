#!/usr/bin/env bash
# tests/vm/recover.sh: kill -9 of the daemon in the middle of a fio
# write-then-verify job, then `shardblk recover`: the job finishes with zero
# errors (in-flight requests are held by the kernel and reissued to the new
# daemon: UBLK_F_USER_RECOVERY + _REISSUE).
#
# The region is written once and flushed before the job, so the job only
# overwrites mapped shards: a first write's mapping is durable only after the
# next FLUSH (the volatile-cache contract of the device, kernel-notes/ublk.md),
# and the job issues none.
. "$(dirname "$0")/lib.sh"

step "pool, volume, device with 2 queues"
make_pool 128M 512M
"$B" volume create rvol --size 256M --shard-size 256K >/dev/null
dev="$("$B" add --volume rvol --number 3 --queues 2 --cpus 0-1 --prefetch readahead \
    --prefetch-depth 3 --prefetch-budget 16M 2>/dev/null)"
wait_dev "$dev"
dd if=/dev/zero of="$dev" bs=1M count=64 oflag=direct status=none
sync "$dev" 2>/dev/null || blockdev --flushbufs "$dev"
pid="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$SHARDBLK_RUN_DIR/ublkb3.json")"
echo "   daemon pid $pid"
ignores_sigpipe "$pid"

step "fio randwrite+verify; kill -9 the daemon after 3 s, recover once quiesced"
(cd "$W" && fio --name=crash --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite \
    --bs=4k --iodepth=16 --size=64M --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --verify_state_save=0 --output-format=json >"$W/crash.json") &
fio_pid=$!
sleep 3
kill -0 "$fio_pid" 2>/dev/null || die "fio ended before the kill; make the job longer"
kill -9 "$pid"
wait_quiesced 3
sleep 1
kill -0 "$fio_pid" 2>/dev/null || die "fio ended while the device had no daemon"
"$B" recover -n 3 || die "recover failed"
"$B" list
# The recovered daemon runs with the prefetch settings `add` was given.
"$B" list --json | python3 -c 'import json,sys; d=json.load(sys.stdin)[0]; assert d["prefetch"] == "readahead", d' ||
    die "recover dropped --prefetch readahead"
"$B" list --json | python3 -c 'import json,sys; d=json.load(sys.stdin)[0]; assert d["scheduler"] == d["scheduler_requested"] == "none", d' ||
    die "the recovered disk's I/O scheduler is not none"
"$B" stats -n 3 --json | python3 -c 'import json,sys; p=json.load(sys.stdin)["prefetch"]; assert p["predictor"] == "readahead", p' ||
    die "the recovered daemon does not run readahead"
python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["prefetch"]; assert p["depth"] == 3 and p["budget_bytes"] == 16 << 20, p' \
    "$SHARDBLK_RUN_DIR/ublkb3.json" || die "recover dropped the prefetch depth or budget"
wait "$fio_pid" || die "fio failed after recovery: $(tail -c 2000 "$W/crash.json")"
python3 - "$W/crash.json" <<'PY' || die "fio reported errors"
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
errs = j.get("error", 0) + j.get("total_err", 0)
print(f"   crash job: {j['write']['total_ios']} writes, {j['read']['total_ios']} verify reads, errors {errs}")
sys.exit(1 if errs or j["read"]["total_ios"] == 0 else 0)
PY
dmesg | grep -i "I/O error" | grep ublkb && die "the kernel logged I/O errors on the device"
step "SIGTERM to the recovered daemon stops and deletes the device"
pid2="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$SHARDBLK_RUN_DIR/ublkb3.json")"
[ "$pid2" != "$pid" ] || die "recover did not start a new daemon"
ignores_sigpipe "$pid2"
kill -TERM "$pid2"
# The daemon deletes the device, then its record: wait for both.
for _ in $(seq 100); do
    [ -e /sys/class/ublk-char/ublkc3 ] || [ -e "$SHARDBLK_RUN_DIR/ublkb3.json" ] || break
    sleep 0.2
done
[ ! -e /sys/class/ublk-char/ublkc3 ] || die "SIGTERM left the device"
[ ! -e "$SHARDBLK_RUN_DIR/ublkb3.json" ] || die "SIGTERM left the record"
echo "PASS recover"
