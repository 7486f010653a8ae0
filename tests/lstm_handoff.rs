//! The split between the lean `shardblk` executable and `shardblk-lstm`:
//! `shardblk` links no libtorch, and hands a command that needs the LSTM to
//! `shardblk-lstm` beside it with its arguments unchanged (or fails with a
//! clear message when that executable is missing).

use std::path::{Path, PathBuf};
use std::process::Command;

fn lean() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shardblk"))
}

/// The ELF's needed libraries (DT_NEEDED), from `readelf -d`.
fn needed(bin: &Path) -> Vec<String> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(bin)
        .output()
        .expect("readelf (binutils) runs");
    assert!(out.status.success(), "readelf -d {}", bin.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| {
            l.split('[')
                .nth(1)
                .map(|s| s.trim_end_matches(']').to_string())
        })
        .collect()
}

#[test]
fn shardblk_links_no_libtorch_and_shardblk_lstm_does() {
    let n = needed(&lean());
    assert!(n.iter().any(|l| l.starts_with("libc.so")), "{n:?}");
    assert!(
        !n.iter().any(|l| l.contains("torch") || l.contains("c10")),
        "{n:?}"
    );
    let heavy = lean().with_file_name("shardblk-lstm");
    assert!(
        heavy.exists(),
        "{} not built (cargo build --workspace)",
        heavy.display()
    );
    let n = needed(&heavy);
    assert!(n.iter().any(|l| l.starts_with("libtorch_cpu")), "{n:?}");
}

fn synth(dir: &Path) -> PathBuf {
    let t = dir.join("t.csv");
    let st = Command::new(lean())
        .args([
            "trace", "synth", "--kind", "strided", "--events", "600", "-o",
        ])
        .arg(&t)
        .status()
        .unwrap();
    assert!(st.success());
    t
}

#[test]
fn lstm_commands_run_in_shardblk_lstm() {
    let dir = tempfile::tempdir().unwrap();
    let t = synth(dir.path());
    let out = Command::new(lean())
        .args(["trace", "eval", "--predictors", "none,lstm", "--json"])
        .arg(&t)
        .env_remove("SHARDBLK_LSTM_BIN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<String> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["predictor"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["none", "lstm"], "{v}");
    let lstm = &v["rows"][1]["stats"];
    assert_eq!(lstm["reads"].as_u64(), Some(600), "{lstm}");
}

#[test]
fn missing_shardblk_lstm_is_a_clear_error_and_others_need_none() {
    let dir = tempfile::tempdir().unwrap();
    let t = synth(dir.path());
    let out = Command::new(lean())
        .args(["trace", "eval", "--predictors", "lstm"])
        .arg(&t)
        .env("SHARDBLK_LSTM_BIN", dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs the LSTM") && err.contains("nowhere"),
        "{err}"
    );
    // Without the LSTM, nothing is handed over.
    let out = Command::new(lean())
        .args(["trace", "eval", "--predictors", "none,markov"])
        .arg(&t)
        .env("SHARDBLK_LSTM_BIN", dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("markov"));
}
