#!/bin/busybox sh
# tools/vm/guest-init.sh: /init of the shardblk test VM's initramfs (busybox sh).
#
# Loads the modules listed in /mods/order, mounts the host root (9p, read-only)
# on /newroot with fresh /dev, /proc, /sys, configfs, /tmp and /run, mounts the
# writable shares, runs /run/shardblk-vm/ctl/cmd (written by run.sh) chrooted,
# stores its exit status in the control share and powers the VM off.
# shellcheck shell=sh

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
stty -onlcr 2>/dev/null

msg() { echo "vm-init: $*"; }
off() {
    sync
    echo 0 >/proc/sys/kernel/printk
    poweroff -f
    sleep 10
}
fail() {
    msg "error: $*"
    off
}

while read -r mod args; do
    # shellcheck disable=SC2086 # args are module parameters, split on purpose
    insmod "/mods/$mod.ko" $args || msg "warning: insmod $mod failed"
done </mods/order

opts=trans=virtio,version=9p2000.L,msize=262144
R=/newroot
mount -t 9p -o "$opts,ro,cache=loose" hostroot "$R" || fail "cannot mount the host root (9p)"
mount -t 9p -o "$opts" vmctl /ctl || fail "cannot mount the control share (9p)"

mount -t devtmpfs devtmpfs "$R/dev" || fail "cannot mount /dev"
mkdir -p "$R/dev/pts" "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t devpts devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
mount -t proc proc "$R/proc" || fail "cannot mount /proc"
mount -t sysfs sysfs "$R/sys" || fail "cannot mount /sys"
mount -t configfs configfs "$R/sys/kernel/config" || msg "warning: no configfs"
mount -t debugfs debugfs "$R/sys/kernel/debug" 2>/dev/null
# Keep a view of the host's /tmp before hiding it under the scratch tmpfs.
mkdir -p /hosttmp
mount --bind "$R/tmp" /hosttmp
mount -t tmpfs -o "mode=1777,size=$(cat /ctl/tmpsize)" tmpfs "$R/tmp" || fail "cannot mount /tmp"
mount -t tmpfs -o mode=0755 tmpfs "$R/run" || fail "cannot mount /run"
mkdir -p "$R/run/shardblk-vm/ctl" "$R/run/shardblk-vm/modules" "$R/run/lock"
mount --bind /ctl "$R/run/shardblk-vm/ctl"
mount --bind /mods "$R/run/shardblk-vm/modules"
# Host paths under /tmp the command needs (its cwd, its script): read-only.
while read -r kind p; do
    [ -n "$p" ] || continue
    if [ "$kind" = f ]; then
        mkdir -p "$R${p%/*}"
        : >"$R$p"
    else
        mkdir -p "$R$p"
    fi
    mount --bind "/hosttmp${p#/tmp}" "$R$p" || msg "warning: cannot expose host $p"
done </ctl/tmpbinds
out="$(cat /ctl/out)"
mkdir -p "$R$out" 2>/dev/null
mount -t 9p -o "$opts" vmout "$R$out" || fail "cannot mount the output share at $out"

# shellcheck disable=SC3045 # busybox sh has ulimit -n
ulimit -n 65536
# Tell run.sh the command starts (a failure before this is a boot failure).
: >/ctl/started
chroot "$R" /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp TERM=dumb LANG=C.UTF-8 DM_DISABLE_UDEV=1 \
    /bin/sh /run/shardblk-vm/ctl/cmd
rc=$?
echo "$rc" >/ctl/rc.tmp && mv /ctl/rc.tmp /ctl/rc
off
