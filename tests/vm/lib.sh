# tests/vm/lib.sh: helpers sourced by the device scripts run in the test VM
# (tools/vm/run.sh). Builds nothing: uses $SHARDBLK_BIN (default
# target/debug/shardblk, relative to the repository root = the cwd).
set -euo pipefail
[ "${SHARDBLK_VM:-}" = 1 ] || [ -c /dev/ublk-control ] || {
    echo "FAIL: needs /dev/ublk-control: run through tools/vm/run.sh" >&2
    exit 1
}
B="${SHARDBLK_BIN:-$PWD/target/debug/shardblk}"
[ -x "$B" ] || { echo "FAIL: no shardblk binary at $B (cargo build first)" >&2; exit 1; }
export SHARDBLK_RUN_DIR="${SHARDBLK_RUN_DIR:-/tmp/shardblk-run}"
W=/tmp/shardblk-test
mkdir -p "$W"
step() { printf '== %s\n' "$*"; }
die() {
    printf 'FAIL: %s\n' "$*" >&2
    [ -f "$SHARDBLK_RUN_DIR/shardblk.log" ] && tail -n 20 "$SHARDBLK_RUN_DIR/shardblk.log" >&2
    # a process the kernel killed says nothing itself
    dmesg 2>/dev/null | grep -i -E "killed process|out of memory|segfault|traps:" | tail -n 5 >&2
    exit 1
}
# A daemon must outlive clients that hang up (a `stats` reader gone
# mid-answer): SIGPIPE ignored, EPIPE handled per connection.
ignores_sigpipe() {
    local mask
    mask="$(awk '/^SigIgn:/ {print $2}' "/proc/$1/status")"
    (( 0x$mask & (1 << 12) )) || die "process $1 does not ignore SIGPIPE (SigIgn $mask)"
}
cleanup() { "$B" del --all >/dev/null 2>&1 || true; }
trap cleanup EXIT

# make_pool HOT_SIZE COLD_SIZE: a two-tier pool on files in the scratch tmpfs.
make_pool() {
    rm -f "$W/hot.img" "$W/cold.img"
    truncate -s "$1" "$W/hot.img"
    truncate -s "$2" "$W/cold.img"
    "$B" pool init --tier hot="$W/hot.img" --tier cold="$W/cold.img" >/dev/null
    export SHARDBLK_POOL="$W/hot.img"
}

# wait_dev PATH: the block device node appears (no udev in the VM).
wait_dev() {
    local i
    for i in $(seq 100); do [ -b "$1" ] && return 0; sleep 0.1; done
    die "$1 did not appear"
}

# wait_quiesced N: after its daemon died, /dev/ublkbN is quiesced (the
# kernel holds its I/O for a `recover`), as `list --json` says, within 20 s.
wait_quiesced() {
    local state="" i
    for i in $(seq 100); do
        state="$("$B" list --json | python3 -c 'import json,sys; print([d for d in json.load(sys.stdin) if d["number"] == int(sys.argv[1])][0]["state"])' "$1")"
        [ "$state" = quiesced ] && break
        sleep 0.2
    done
    echo "   state after kill: $state"
    [ "$state" = quiesced ] || die "/dev/ublkb$1 not quiesced after the daemon died ($state)"
}
