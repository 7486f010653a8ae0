//! The `shardblk` command as users run it: pool and volume verbs end to end,
//! `--json` output, and bad input answered with one clear line, a non-zero
//! exit and no change.

use std::path::Path;
use std::process::{Command, Output};

fn shardblk(pool: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardblk"))
        .args(args)
        .env("SHARDBLK_POOL", pool)
        .output()
        .expect("run shardblk")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A failure whose stderr is one line containing `what`.
fn refused(o: &Output, what: &str) {
    assert!(
        !o.status.success(),
        "should fail: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let first = err.lines().next().unwrap_or("");
    assert!(
        first.contains(what),
        "'{what}' not in the first line: {err}"
    );
    // One line of ours; clap's usage errors add only its '--help' hint.
    let rest: Vec<&str> = err
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        rest.is_empty() || rest == ["For more information, try '--help'."],
        "one clear line: {err}"
    );
}

#[test]
fn pool_and_volume_verbs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (hot, cold) = (dir.path().join("hot"), dir.path().join("cold"));
    std::fs::File::create(&hot)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    std::fs::File::create(&cold)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let tier = |n: &str, p: &Path| format!("{n}={}", p.display());
    ok(&shardblk(
        &cold,
        &[
            "pool",
            "init",
            "--tier",
            &tier("hot", &hot),
            "--tier",
            &tier("cold", &cold),
        ],
    ));
    let out = ok(&shardblk(
        &cold,
        &[
            "volume",
            "create",
            "v1",
            "--size",
            "1T",
            "--shard-size",
            "256K",
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["size_bytes"], 1u64 << 40);
    assert_eq!(v["shard_size_bytes"], 256 * 1024);

    // Data in and out; an unaligned tail is zero-padded on write.
    let input = dir.path().join("in");
    let data: Vec<u8> = (0..3_000_123u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&input, &data).unwrap();
    ok(&shardblk(
        &cold,
        &[
            "volume",
            "write",
            "v1",
            "--input",
            input.to_str().unwrap(),
            "--offset",
            "1G",
        ],
    ));
    let output = dir.path().join("out");
    ok(&shardblk(
        &cold,
        &[
            "volume",
            "read",
            "v1",
            "--offset",
            "1G",
            "--length",
            "3000123",
            "--output",
            output.to_str().unwrap(),
        ],
    ));
    assert!(std::fs::read(&output).unwrap() == data);

    let info: serde_json::Value =
        serde_json::from_str(&ok(&shardblk(&hot, &["volume", "inspect", "v1", "--json"]))).unwrap();
    let mapped: u64 = info["mapped_bytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[1].as_u64().unwrap())
        .sum();
    assert_eq!(
        mapped,
        3_000_123u64.div_ceil(256 * 1024) * 256 * 1024,
        "thin: only the touched shards"
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(&shardblk(&hot, &["volume", "list", "--json"]))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let status: serde_json::Value =
        serde_json::from_str(&ok(&shardblk(&hot, &["pool", "status", "--json"]))).unwrap();
    assert_eq!(status["tiers"].as_array().unwrap().len(), 2);

    ok(&shardblk(
        &hot,
        &["volume", "policy", "v1", "write=cold,promote=0"],
    ));
    assert!(ok(&shardblk(&hot, &["volume", "inspect", "v1"])).contains("write=1"));
    ok(&shardblk(&hot, &["volume", "resize", "v1", "--size", "2T"]));
    ok(&shardblk(&hot, &["pool", "balance", "--windows", "2"]));
    ok(&shardblk(&hot, &["volume", "delete", "v1"]));
    let status: serde_json::Value =
        serde_json::from_str(&ok(&shardblk(&hot, &["pool", "status", "--json"]))).unwrap();
    assert_eq!(status["volumes"], 0);
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (hot, small) = (dir.path().join("hot"), dir.path().join("small"));
    std::fs::File::create(&hot)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    std::fs::File::create(&small)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let hot_s = format!("hot={}", hot.display());
    refused(
        &shardblk(
            &hot,
            &[
                "pool",
                "init",
                "--tier",
                &hot_s,
                "--tier",
                &format!("cold={}", small.display()),
            ],
        ),
        "too small",
    );
    assert!(
        std::fs::read(&hot).unwrap().iter().all(|&b| b == 0),
        "nothing written on refusal"
    );
    refused(
        &shardblk(&hot, &["pool", "init", "--tier", "nopath"]),
        "NAME=PATH",
    );
    refused(
        &shardblk(&hot, &["volume", "list"]),
        "not a shardblk pool device",
    );
    ok(&shardblk(&hot, &["pool", "init", "--tier", &hot_s]));
    refused(
        &shardblk(&hot, &["pool", "init", "--tier", &hot_s]),
        "already a member of pool",
    );
    refused(
        &shardblk(&hot, &["volume", "create", "v", "--size", "12Q"]),
        "not a size",
    );
    refused(
        &shardblk(
            &hot,
            &[
                "volume",
                "create",
                "v",
                "--size",
                "1G",
                "--shard-size",
                "96K",
            ],
        ),
        "power of two",
    );
    refused(
        &shardblk(
            &hot,
            &[
                "volume", "create", "v", "--size", "1G", "--policy", "speed=11",
            ],
        ),
        "unknown key",
    );
    refused(
        &shardblk(&hot, &["volume", "create", "bad/name", "--size", "1G"]),
        "invalid volume name",
    );
    ok(&shardblk(&hot, &["volume", "create", "v", "--size", "1G"]));
    refused(
        &shardblk(&hot, &["volume", "create", "v", "--size", "1G"]),
        "already exists",
    );
    refused(
        &shardblk(&hot, &["volume", "inspect", "nope"]),
        "no volume named 'nope'",
    );
    refused(
        &shardblk(
            &hot,
            &[
                "volume",
                "read",
                "v",
                "--offset",
                "2G",
                "--output",
                "/dev/null",
            ],
        ),
        "inside the volume",
    );
    let list = ok(&shardblk(&hot, &["volume", "list", "--json"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&list)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Remote staging's flags: a cluster volume's prefetching needs a stage
/// tier, a stage tier needs prefetching, and only a cluster volume takes
/// one; each refused with one line before any daemon starts.
#[test]
fn stage_tier_flags_are_checked_before_a_daemon_starts() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("none");
    let tier = dir.path().join("stage.img");
    let t = tier.to_str().unwrap();
    let seed = ["add", "--volume", "cv", "--seed", "127.0.0.1:1"];
    let with = |more: &[&str]| {
        let mut a = seed.to_vec();
        a.extend_from_slice(more);
        shardblk(&p, &a)
    };
    refused(&with(&["--prefetch", "none"]), "needs --stage-tier");
    refused(&with(&["--stage-tier", t]), "--stage-tier needs --prefetch");
    // clap's own message names the missing flag
    let o = shardblk(&p, &["add", "--volume", "v", "--stage-tier", t]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--seed"));
    assert!(!tier.exists());
}

/// The lstm predictor's `--lstm-*` flags: refused with one line before any
/// daemon starts when the predictor is another, prefetching is off, or a
/// value is out of range.
#[test]
fn lstm_flags_are_checked_before_a_daemon_starts() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("none");
    let add = |more: &[&str]| {
        let mut a = vec!["add", "--volume", "v"];
        a.extend_from_slice(more);
        shardblk(&p, &a)
    };
    refused(
        &add(&["--lstm-lookahead", "0"]),
        "--lstm-* flags need --prefetch lstm",
    );
    refused(
        &add(&["--prefetch", "markov", "--lstm-no-online"]),
        "apply to --prefetch lstm only, not markov",
    );
    refused(
        &add(&["--prefetch", "readahead", "--lstm-streams", "regions"]),
        "not readahead",
    );
    refused(&add(&["--lstm-streams", "region"]), "unknown lstm streams");
    assert!(!dir.path().join("none").exists());
}
