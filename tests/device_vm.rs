//! End-to-end tests of the ublk device, run inside the test VM
//! (`tools/vm/run.sh`, see `kernel-notes/vm.md`) because the host kernel has
//! no ublk driver; natively when the host has `/dev/ublk-control`.
//!
//! Each test runs one script of `tests/vm/` with the `shardblk` binary cargo
//! built for this test run (`CARGO_BIN_EXE_shardblk`) and asserts it exits 0.
//! A VM that cannot start (no qemu, no kernel) FAILS the test with the
//! runner's message; set `SHARDBLK_SKIP_VM=1` to skip these tests explicitly.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// One VM at a time: a TCG guest keeps both host cores busy, and two guests
/// at once make each so slow that the scripts' waits stop meaning anything.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run_script(name: &str) {
    if std::env::var("SHARDBLK_SKIP_VM").as_deref() == Ok("1") {
        eprintln!("SHARDBLK_SKIP_VM=1: skipping the VM test {name}");
        return;
    }
    // A test that failed while holding the lock poisons it; the next VM is
    // still fine to run.
    let _vm = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/vm").join(name);
    let bin = env!("CARGO_BIN_EXE_shardblk");
    let native = Path::new("/dev/ublk-control").exists() && nix_is_root();
    let mut cmd = if native {
        let mut c = Command::new("bash");
        c.arg(&script);
        c
    } else {
        let mut c = Command::new(root.join("tools/vm/run.sh"));
        c.args(["--timeout", "900"]).arg(&script);
        c
    };
    cmd.current_dir(root)
        .env("SHARDBLK_BIN", bin)
        .env("SHARDBLK_VM_EXTRA_MODULES", "ext4");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start the VM runner for {name}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "VM test {name} failed ({}){}; output above. Set SHARDBLK_SKIP_VM=1 to skip VM tests explicitly.",
        out.status,
        match out.status.code() {
            Some(124) => ": the VM timed out",
            Some(125) => ": the VM did not start or panicked (is qemu installed? tools/vm/setup.sh)",
            _ => "",
        }
    );
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn ext4_on_device_survives_fsck_and_restart() {
    run_script("ext4.sh");
}

#[test]
fn fio_verify_random_and_sequential() {
    run_script("fio_verify.sh");
}

#[test]
fn kill_daemon_mid_verify_then_recover() {
    run_script("recover.sh");
}

#[test]
fn thin_volume_fills_with_enospc_and_loses_nothing() {
    run_script("enospc.sh");
}

#[test]
fn prefetch_stages_hits_verifies_and_records_traces() {
    run_script("prefetch.sh");
}

#[test]
fn cluster_volume_device_survives_a_killed_node() {
    run_script("cluster_dev.sh");
}
