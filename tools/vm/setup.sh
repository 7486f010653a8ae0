#!/usr/bin/env bash
# tools/vm/setup.sh: prepares the test VM used to run shardblk's device tests.
#
# Idempotent. Installs the host packages the VM runner needs, resolves the
# current Debian trixie-backports kernel, downloads and unpacks it (kernel +
# modules) into a cache dir through a PRIVATE apt configuration (the host's
# apt setup is not touched), resolves module dependencies with depmod, and
# builds a busybox initramfs that loads the modules and hands over to the
# guest init written by tools/vm/run.sh.
#
# Environment:
#   SHARDBLK_VM_DIR            cache dir (default: <repo>/.vm)
#   SHARDBLK_VM_SUITE          Debian suite to take the kernel from (default: trixie-backports)
#   SHARDBLK_VM_KERNEL         pin a kernel ABI version such as 7.3.4+deb13 (default: what
#                              the suite's linux-image-amd64 depends on)
#   SHARDBLK_VM_MIRROR         Debian mirror URL (default: the host's, else deb.debian.org)
#   SHARDBLK_VM_EXTRA_MODULES  extra module names to put in the initramfs and load
#   SHARDBLK_VM_REFRESH        1: refresh the package lists now (else at most once a day)
#
# Prints the path of the generated env file (boot artefacts) on its last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
vm_dir="${SHARDBLK_VM_DIR:-$repo/.vm}"
suite="${SHARDBLK_VM_SUITE:-trixie-backports}"
# Modules loaded in the guest, in this order (their dependencies first).
base_modules=(9pnet_virtio 9p configfs loop dm_mod dm_delay null_blk ublk_drv virtio_blk)
read -r -a extra_modules <<<"${SHARDBLK_VM_EXTRA_MODULES:-}"
modules=("${base_modules[@]}" "${extra_modules[@]}")

log() { printf 'vm-setup: %s\n' "$*" >&2; }
die() { printf 'vm-setup: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- host packages -----------------------------------------------------------
# Tools needed to build/boot the VM, plus the tools test scripts run inside the
# guest (the guest runs the host's binaries through a read-only 9p root).
host_packages=(qemu-system-x86 busybox-static xz-utils kmod debian-archive-keyring
    fio dmsetup e2fsprogs util-linux)

install_host_packages() {
    local missing=() p
    for p in "${host_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing host packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -qq update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends \
        "${missing[@]}" >/dev/null
}

# --- private apt -------------------------------------------------------------
apt_dir="$vm_dir/apt"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

host_mirror() {
    if [ -n "${SHARDBLK_VM_MIRROR:-}" ]; then
        echo "$SHARDBLK_VM_MIRROR"
        return
    fi
    local m
    # One-line (deb URL suite ...) and deb822 (URIs: URL) formats.
    m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | grep -v '^[[:space:]]*#' |
        grep -oE '(https?)://[^[:space:]]+/debian/?([[:space:]]|$)' | head -n1 | tr -d '[:space:]')" || true
    echo "${m:-http://deb.debian.org/debian}"
}

apt_opts=()
setup_private_apt() {
    mkdir -p "$apt_dir/etc/sources.list.d" "$apt_dir/etc/preferences.d" \
        "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    local mirror line
    mirror="$(host_mirror)"
    line="deb [signed-by=$keyring] ${mirror%/} $suite main"
    if [ ! -f "$apt_dir/etc/sources.list" ] || [ "$(cat "$apt_dir/etc/sources.list")" != "$line" ]; then
        echo "$line" >"$apt_dir/etc/sources.list"
        rm -f "$apt_dir/lists/stamp"
    fi
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/etc/sources.list"
        -o "Dir::Etc::SourceParts=$apt_dir/etc/sources.list.d"
        -o "Dir::Etc::PreferencesParts=$apt_dir/etc/preferences.d"
        -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache=$apt_dir/cache"
        -o "Acquire::Languages=none"
        -o "APT::Sandbox::User=root"
        -o "Debug::NoLocking=1")
}

refresh_lists() {
    local stamp="$apt_dir/lists/stamp"
    if [ "${SHARDBLK_VM_REFRESH:-0}" != 1 ] && [ -f "$stamp" ] &&
        [ -z "$(find "$stamp" -mmin +1440)" ]; then
        return 0
    fi
    log "refreshing package lists for $suite"
    if apt-get "${apt_opts[@]}" -qq update; then
        touch "$stamp"
    elif [ -f "$vm_dir/current.env" ]; then
        log "warning: apt update failed; keeping the cached kernel"
        return 1
    else
        die "apt-get update for $suite failed"
    fi
}

# Kernel ABI version (e.g. 7.3.4+deb13) that the suite's linux-image-amd64 pulls in.
resolve_kernel() {
    if [ -n "${SHARDBLK_VM_KERNEL:-}" ]; then
        echo "$SHARDBLK_VM_KERNEL"
        return
    fi
    local v
    v="$(apt-cache "${apt_opts[@]}" show linux-image-amd64 2>/dev/null |
        grep -oE 'linux-image-[^ ,]+-amd64' | sed -e 's/^linux-image-//' -e 's/-amd64$//' |
        sort -V | tail -n1)"
    [ -n "$v" ] || die "cannot resolve linux-image-amd64 in $suite"
    echo "$v"
}

# --- kernel download + unpack ---------------------------------------------------
fetch_kernel() {
    local abi="$1" kroot="$2"
    local deb_dir="$vm_dir/deb/$abi"
    local image="linux-image-$abi-amd64" pkgs=() p abi_re
    abi_re="$(printf '%s' "$abi" | sed 's/[.+]/\\&/g')"
    # New packaging splits the image into binary/modules/base; old packaging
    # ships everything in linux-image-*. Take the image and its same-ABI parts.
    pkgs+=("$image")
    while read -r p; do pkgs+=("$p"); done < <(apt-cache "${apt_opts[@]}" show "$image" |
        grep '^Depends:' | head -n1 | grep -oE "linux-(binary|modules|base)-$abi_re-amd64" | sort -u)
    mkdir -p "$deb_dir"
    log "downloading ${pkgs[*]}"
    (cd "$deb_dir" && apt-get "${apt_opts[@]}" -qq download "${pkgs[@]}") ||
        die "download of kernel $abi failed"
    rm -rf "$kroot.tmp"
    mkdir -p "$kroot.tmp"
    for p in "$deb_dir"/*.deb; do dpkg-deb -x "$p" "$kroot.tmp"; done
    # Debian kernels are usrmerged: depmod -b looks in <base>/lib/modules.
    [ -e "$kroot.tmp/lib" ] || ln -s usr/lib "$kroot.tmp/lib"
    local kver
    kver="$(basename "$(find "$kroot.tmp/lib/modules/" -mindepth 1 -maxdepth 1 -type d | head -n1)")"
    [ -n "$kver" ] || die "no modules directory in the $abi packages"
    log "running depmod for $kver"
    depmod -b "$kroot.tmp" "$kver"
    rm -rf "$kroot"
    mv "$kroot.tmp" "$kroot"
    rm -rf "$deb_dir"
}

# --- initramfs -------------------------------------------------------------------
norm() { echo "${1//-/_}"; }

build_initramfs() {
    local kroot="$1" kver="$2" out="$3"
    local mdir="$kroot/lib/modules/$kver" dep_file stage
    dep_file="$mdir/modules.dep"
    stage="$(mktemp -d "$vm_dir/initramfs.XXXXXX")"
    declare -A path_of=() deps_of=() done_mod=() builtin=()
    local line target rest name b
    while IFS= read -r line; do
        target="${line%%:*}"
        rest="${line#*:}"
        b="${target##*/}"
        name="$(norm "${b%%.ko*}")"
        path_of[$name]="$target"
        deps_of[$name]="$rest"
    done <"$dep_file"
    while IFS= read -r line; do
        b="${line##*/}"
        builtin[$(norm "${b%%.ko*}")]=1
    done <"$mdir/modules.builtin"

    mkdir -p "$stage"/{bin,dev,proc,sys,mods,newroot,ctl}
    cp /bin/busybox "$stage/bin/busybox"
    : >"$stage/mods/order"
    local order=()
    visit() {
        local n="$1" d db
        [ -n "${done_mod[$n]:-}" ] && return 0
        done_mod[$n]=1
        for d in ${deps_of[$n]}; do
            db="${d##*/}"
            visit "$(norm "${db%%.ko*}")"
        done
        order+=("$n")
    }
    local m n
    for m in "${modules[@]}"; do
        n="$(norm "$m")"
        if [ -n "${builtin[$n]:-}" ]; then continue; fi
        [ -n "${path_of[$n]:-}" ] || die "module $m not found in kernel $kver"
        visit "$n"
    done
    for n in "${order[@]}"; do
        local src="$mdir/${path_of[$n]}"
        case "$src" in
            *.xz) xz -dc "$src" >"$stage/mods/$n.ko" ;;
            *.zst) zstd -qdc "$src" >"$stage/mods/$n.ko" ;;
            *.gz) gzip -dc "$src" >"$stage/mods/$n.ko" ;;
            *) cp "$src" "$stage/mods/$n.ko" ;;
        esac
        case "$n" in
            # Devices are made on demand through configfs / loop-control.
            null_blk) echo "$n nr_devices=0" ;;
            *) echo "$n" ;;
        esac >>"$stage/mods/order"
    done
    cp "$here/guest-init.sh" "$stage/init"
    chmod 0755 "$stage/init"
    echo "$kver" >"$stage/kver"
    (cd "$stage" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null) >"$out.tmp"
    mv "$out.tmp" "$out"
    log "initramfs ready: $out ($(du -h "$out" | cut -f1), modules: ${order[*]})"
    rm -rf "$stage"
}

main() {
    mkdir -p "$vm_dir"
    # Concurrent runs (parallel tests) wait for one another here.
    exec 9>"$vm_dir/.lock"
    flock 9
    install_host_packages
    setup_private_apt
    local have_lists=1
    refresh_lists || have_lists=0
    local abi
    if [ "$have_lists" = 1 ]; then
        abi="$(resolve_kernel)"
    else
        # shellcheck disable=SC1091
        abi="$(. "$vm_dir/current.env" && echo "$SHARDBLK_VM_ABI")"
    fi
    local kroot="$vm_dir/kernel/$abi"
    [ -d "$kroot/lib/modules" ] || fetch_kernel "$abi" "$kroot"
    local kver vmlinuz
    kver="$(basename "$(find "$kroot/lib/modules/" -mindepth 1 -maxdepth 1 -type d | head -n1)")"
    vmlinuz=""
    for f in "$kroot/lib/modules/$kver/vmlinuz" "$kroot/boot/vmlinuz-$kver"; do
        if [ -f "$f" ]; then vmlinuz="$f"; break; fi
    done
    [ -n "$vmlinuz" ] || die "no vmlinuz for $kver"
    # The initramfs depends on the kernel, the module list, the init and busybox.
    local key initrd
    key="$( (echo "$kver ${modules[*]}"; cat "$here/guest-init.sh" "$here/setup.sh"; cksum </bin/busybox) |
        cksum | cut -d' ' -f1)"
    initrd="$vm_dir/initramfs-$kver-$key.cpio"
    if [ ! -f "$initrd" ]; then
        log "building the initramfs for $kver"
        rm -f "$vm_dir"/initramfs-"$kver"-*.cpio
        build_initramfs "$kroot" "$kver" "$initrd"
    fi
    local env_file="$vm_dir/current.env"
    local content
    content="$(printf 'SHARDBLK_VM_DIR=%q\nSHARDBLK_VM_ABI=%q\nSHARDBLK_VM_KVER=%q\nSHARDBLK_VM_KERNEL_IMAGE=%q\nSHARDBLK_VM_INITRD=%q\n' \
        "$(cd "$vm_dir" && pwd)" "$abi" "$kver" "$vmlinuz" "$initrd")"
    if [ ! -f "$env_file" ] || [ "$(cat "$env_file")" != "$content" ]; then
        echo "$content" >"$env_file"
    fi
    # Helper that prints the ublk driver's feature flags (optional: needs a C compiler).
    local feat="$vm_dir/bin/ublk-features"
    if [ ! -x "$feat" ] || [ "$here/ublk-features.c" -nt "$feat" ]; then
        mkdir -p "$vm_dir/bin"
        if command -v cc >/dev/null; then
            cc -O2 -Wall -o "$feat" "$here/ublk-features.c" || log "warning: cannot build ublk-features"
        else
            log "no C compiler: skipping ublk-features"
        fi
    fi
    echo "$env_file"
}

main "$@"
