#!/usr/bin/env bash
# tools/vm/run.sh: run a script as root inside the shardblk test VM.
#
# Usage: tools/vm/run.sh [--mem MIB] [--cpus N] [--timeout SECS] [--disk SIZE]
#                        [--realtime] [--verbose] SCRIPT [ARGS...]
#
# Boots the trixie-backports kernel prepared by setup.sh under qemu (TCG), with
# the host's root mounted read-only (same paths inside), and runs SCRIPT with
# ARGS chrooted there as root, in the caller's working directory. SCRIPT's
# output is streamed to stdout; run.sh exits with SCRIPT's exit status.
# A boot failure, guest kernel panic or timeout exits non-zero (125, 124) with
# a message on stderr.
#
# --realtime runs qemu at real-time priority (SCHED_FIFO 1, `chrt`), for
# benchmarks: under TCG every guest wake-up waits for a host CPU, so other
# work on the host (even niced builds) spread one target's rounds 2-3x; at
# real-time priority the rounds of a loaded host agree within a few percent
# (bench/RESULTS.md). The kernel's RT throttling leaves the host only 5 %:
# other work on the host (tests, builds) nearly stops while the guest runs.
# Without the privilege it says so and runs at normal priority.
#
# Inside the guest:
#   /tmp                 writable tmpfs scratch area (SHARDBLK_VM_SCRATCH=/tmp)
#   $SHARDBLK_VM_OUT     writable share of a host directory, same path as on the host
#                        (env SHARDBLK_VM_OUT on the host; default: a new temp dir,
#                        whose path is printed to stderr and kept)
#   /dev/vda             raw virtio disk of SIZE (sparse host file) with --disk SIZE
#   /run/shardblk-vm/modules/*.ko  the modules loaded at boot (for rmmod/insmod with
#                        other parameters); null_blk is loaded with nr_devices=0
#   SHARDBLK_VM=1, DM_DISABLE_UDEV=1; no udev: run `dmsetup mknodes` after creating
#   dm devices. Host env vars SHARDBLK_*, RUST_LOG and RUST_BACKTRACE pass through.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

mem=2048
cpus=2
timeout_s=600
disk=""
verbose=0
realtime=0
usage() { sed -n '3,5p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --mem) mem="$2"; shift 2 ;;
        --cpus) cpus="$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        --disk) disk="$2"; shift 2 ;;
        --verbose) verbose=1; shift ;;
        --realtime) realtime=1; shift ;;
        -h | --help) usage ;;
        --) shift; break ;;
        -*) echo "run.sh: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || usage
script="$1"
shift
[ -f "$script" ] || { echo "run.sh: no such script: $script" >&2; exit 2; }
script="$(cd "$(dirname "$script")" && pwd)/$(basename "$script")"

env_file="$("$here/setup.sh" | tail -n1)"
# shellcheck disable=SC1090
. "$env_file"

work="$(mktemp -d "${TMPDIR:-/tmp}/shardblk-vm.XXXXXX")"
ctl="$work/ctl"
mkdir -p "$ctl"
default_out=0
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    rm -rf "$work"
    # A default output dir is kept only when the guest wrote something there.
    if [ "$default_out" = 1 ]; then
        rmdir "$out" 2>/dev/null || echo "run.sh: guest output kept in $out" >&2
    fi
}
trap cleanup EXIT

if [ -n "${SHARDBLK_VM_OUT:-}" ]; then
    mkdir -p "$SHARDBLK_VM_OUT"
    out="$(cd "$SHARDBLK_VM_OUT" && pwd)"
else
    out="$(mktemp -d "${TMPDIR:-/tmp}/shardblk-vm-out.XXXXXX")"
    default_out=1
fi
cwd="$(pwd)"

# The guest's /tmp is a fresh tmpfs: expose the host's /tmp paths the command needs.
# Lines "d PATH" (directory) or "f PATH" (single file).
{
    case "$cwd" in /tmp/*) echo "d $cwd" ;; esac
    case "$SHARDBLK_VM_DIR" in /tmp/*) echo "d $SHARDBLK_VM_DIR/bin" ;; esac
    case "$script" in
        /tmp/*/*) echo "d $(dirname "$script")" ;;
        /tmp/*) echo "f $script" ;;
    esac
} >"$ctl/tmpbinds"
echo "$out" >"$ctl/out"
echo "$((mem / 2))m" >"$ctl/tmpsize"

{
    echo "export SHARDBLK_VM=1 SHARDBLK_VM_SCRATCH=/tmp SHARDBLK_VM_OUT=$(printf %q "$out")"
    echo "export SHARDBLK_VM_KVER=$(printf %q "$SHARDBLK_VM_KVER")"
    echo "export SHARDBLK_VM_MODULES=/run/shardblk-vm/modules SHARDBLK_VM_DIR=$(printf %q "$SHARDBLK_VM_DIR")"
    # libtorch's AVX2 kernels use VGATHERDPS, which this qemu's TCG gets wrong
    # (the LSTM's inference thread segfaulted on it in the guest): the guest's
    # processes run libtorch's portable kernels and SSE4 BLAS instead.
    echo "export ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41"
    while IFS='=' read -r name _; do
        case "$name" in
            SHARDBLK_VM | SHARDBLK_VM_OUT | SHARDBLK_VM_SCRATCH | SHARDBLK_VM_KVER | SHARDBLK_VM_MODULES | SHARDBLK_VM_DIR) ;;
            SHARDBLK_* | RUST_LOG | RUST_BACKTRACE)
                echo "export $name=$(printf %q "${!name}")" ;;
        esac
    done < <(env)
    echo "cd $(printf %q "$cwd") || exit 126"
    printf 'if [ -x %q ]; then exec' "$script"
    printf ' %q' "$script" "$@"
    printf '; else exec /bin/bash'
    printf ' %q' "$script" "$@"
    printf '; fi\n'
} >"$ctl/cmd"

drive=()
if [ -n "$disk" ]; then
    truncate -s "$disk" "$work/disk.img"
    drive=(-drive "file=$work/disk.img,if=virtio,format=raw,cache=unsafe,discard=unmap")
fi
cmdline="console=ttyS0 panic=-1 mitigations=off tsc=reliable rdinit=/init"
if [ "$verbose" = 1 ]; then cmdline="$cmdline loglevel=7"; else cmdline="$cmdline quiet loglevel=3"; fi

prio=()
if [ "$realtime" = 1 ]; then
    if chrt -f 1 true 2>/dev/null; then
        prio=(chrt -f 1)
    else
        echo "run.sh: cannot use real-time priority here (chrt -f 1 refused): running qemu at normal priority, expect noisier timings" >&2
    fi
fi

# A guest kernel that dies before the command starts (seen under TCG: an
# int3 Oops in the scheduler at 1.2 s of boot, before any script) is booted
# once more; a failure after the command started is never retried.
for attempt in 1 2; do
    rm -f "$ctl/started" "$ctl/rc"
    start=$(date +%s.%N)
    set +e
    timeout -k 10 "$timeout_s" "${prio[@]}" qemu-system-x86_64 \
        -nodefaults -no-user-config -machine q35 -accel tcg,thread=multi -cpu max \
        -smp "$cpus" -m "$mem" -display none -no-reboot \
        -chardev stdio,id=con,signal=off -serial chardev:con \
        -kernel "$SHARDBLK_VM_KERNEL_IMAGE" -initrd "$SHARDBLK_VM_INITRD" -append "$cmdline" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$ctl,mount_tag=vmctl,security_model=none" \
        -virtfs "local,path=$out,mount_tag=vmout,security_model=none" \
        "${drive[@]}" </dev/null
    qrc=$?
    set -e
    if [ "$attempt" = 1 ] && [ ! -f "$ctl/started" ] && [ ! -f "$ctl/rc" ] &&
        [ "$qrc" != 124 ] && [ "$qrc" != 137 ]; then
        echo "run.sh: the guest stopped before the command started (qemu exit $qrc): booting once more" >&2
        continue
    fi
    break
done
elapsed="$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"

if [ -f "$ctl/rc" ]; then
    rc="$(cat "$ctl/rc")"
    [ "$verbose" = 1 ] && echo "run.sh: guest command exited $rc after ${elapsed}s (kernel $SHARDBLK_VM_KVER)" >&2
    exit "$rc"
fi
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    echo "run.sh: error: timed out after ${timeout_s}s (qemu killed)" >&2
    exit 124
fi
echo "run.sh: error: the guest stopped without reporting an exit status (qemu exit $qrc, ${elapsed}s): boot failure or kernel panic, see the console output above" >&2
exit 125
