//! Prefetch engine end to end: each baseline on the pattern it must catch and
//! on random input it must not chase; every shared trace parses; the CLI
//! converts, generates and evaluates through files.

use shardblk::cli::trace as cli_trace;

use shardblk::prefetch::sim::{simulate, SimConfig, SimStats};
use shardblk::prefetch::synth::{generate, SynthConfig, SynthKind};
use shardblk::prefetch::{PredictorKind, PrefetchConfig};
use shardblk::trace::TraceEvent;
use std::path::Path;

const SEED: u64 = 11;

fn run(kind: PredictorKind, ev: &[TraceEvent], shard_bytes: u64) -> SimStats {
    let cfg = SimConfig {
        prefetch: PrefetchConfig {
            shard_bytes,
            ..Default::default()
        },
        hot_shards: 512,
        ..Default::default()
    };
    let mut p = kind.build(&cfg.prefetch).unwrap();
    simulate(ev, &cfg, p.as_mut()).unwrap()
}

fn synth(kind: SynthKind) -> Vec<TraceEvent> {
    // 20 ms between reads: the tests judge prediction, not staging bandwidth.
    generate(&SynthConfig {
        events: 8000,
        interarrival_ns: 20_000_000,
        think_ns: 0,
        ..SynthConfig::new(kind, SEED)
    })
}

#[test]
fn readahead_follows_interleaved_sequential_streams() {
    let ev = synth(SynthKind::Sequential);
    let none = run(PredictorKind::None, &ev, 64 << 10);
    let ra = run(PredictorKind::Readahead, &ev, 64 << 10);
    assert!(ra.precision > 0.9, "seed {SEED}: {ra:?}");
    assert!(ra.coverage > 0.8, "seed {SEED}: {ra:?}");
    assert!(
        ra.hit_ratio > none.hit_ratio + 0.5,
        "seed {SEED}: {ra:?} vs {none:?}"
    );
    assert!(ra.mean_latency_ns < none.mean_latency_ns / 2.0);
}

#[test]
fn stride_follows_interleaved_strides() {
    let ev = synth(SynthKind::Strided);
    let none = run(PredictorKind::None, &ev, 64 << 10);
    let st = run(PredictorKind::Stride, &ev, 64 << 10);
    let ra = run(PredictorKind::Readahead, &ev, 64 << 10);
    assert!(st.precision > 0.8, "seed {SEED}: {st:?}");
    assert!(st.coverage > 0.7, "seed {SEED}: {st:?}");
    assert!(st.mean_latency_ns < none.mean_latency_ns / 2.0);
    assert!(
        st.hit_ratio > ra.hit_ratio + 0.5,
        "readahead cannot follow strides: {ra:?}"
    );
}

#[test]
fn markov_learns_a_repeated_sequence() {
    let ev = synth(SynthKind::Repeated);
    let none = run(PredictorKind::None, &ev, 64 << 10);
    let mk = run(PredictorKind::Markov, &ev, 64 << 10);
    assert!(mk.precision > 0.7, "seed {SEED}: {mk:?}");
    assert!(
        mk.hit_ratio > none.hit_ratio + 0.3,
        "seed {SEED}: {mk:?} vs {none:?}"
    );
    for k in [PredictorKind::Readahead, PredictorKind::Stride] {
        assert!(mk.hit_ratio > run(k, &ev, 64 << 10).hit_ratio, "{k:?}");
    }
}

#[test]
fn random_reads_are_not_chased() {
    let ev = synth(SynthKind::Random);
    for k in [
        PredictorKind::Readahead,
        PredictorKind::Stride,
        PredictorKind::Markov,
    ] {
        let s = run(k, &ev, 64 << 10);
        // Few stagings, and those few rarely useful.
        assert!(s.staged < s.reads / 10, "seed {SEED} {k:?}: {s:?}");
        assert!(s.precision < 0.2, "seed {SEED} {k:?}: {s:?}");
    }
}

#[test]
fn every_shared_trace_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        eprintln!("no {} here; skipped", dir.display());
        return;
    };
    let mut n = 0;
    for e in rd {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.ends_with(".csv.gz") || name.ends_with(".blocks")) {
            continue;
        }
        let ev = cli_trace::read_trace_file(&p).unwrap();
        assert!(ev.len() > 1000, "{name}: {} events", ev.len());
        assert!(ev.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns), "{name}");
        n += 1;
    }
    assert!(n >= 9, "{n} traces");
}

#[test]
fn cli_synth_convert_eval() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: cli_trace::TraceCmd,
    }
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let go = |args: &[&str]| {
        let argv = std::iter::once("trace").chain(args.iter().copied());
        cli_trace::run(Cli::try_parse_from(argv).unwrap().cmd)
    };
    go(&[
        "synth",
        "--kind",
        "sequential",
        "--events",
        "500",
        "-o",
        &d("s.csv.gz"),
    ])
    .unwrap();
    let ev = cli_trace::read_trace_file(Path::new(&d("s.csv.gz"))).unwrap();
    assert_eq!(ev.len(), 500);
    go(&[
        "convert",
        "--from",
        "csv",
        &d("s.csv.gz"),
        "-o",
        &d("s.iolog"),
        "--to",
        "fio",
        "--fio-wrap",
        "1G",
    ])
    .unwrap();
    go(&[
        "convert",
        "--from",
        "fio",
        &d("s.iolog"),
        "-o",
        &d("back.csv"),
    ])
    .unwrap();
    let back = cli_trace::read_trace_file(Path::new(&d("back.csv"))).unwrap();
    assert_eq!(back.len(), 500);
    assert!(back.iter().all(|e| e.offset + e.len <= 1 << 30));
    std::fs::write(d("x.blocks"), "1\n2\n3\n").unwrap();
    go(&[
        "convert",
        "--from",
        "lirs",
        &d("x.blocks"),
        "-o",
        &d("x.csv"),
        "--block-size",
        "8K",
    ])
    .unwrap();
    let x = cli_trace::read_trace_file(Path::new(&d("x.csv"))).unwrap();
    assert_eq!(
        x.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![8192, 16384, 24576]
    );
    go(&[
        "eval",
        &d("s.csv.gz"),
        &d("x.blocks"),
        "--shard-size",
        "64K,1M",
        "--hot-shards",
        "64",
        // The LSTM needs its backend (shardblk-lstm; tests/lstm_handoff.rs).
        "--predictors",
        "none,readahead,stride,markov",
    ])
    .unwrap();
    go(&[
        "eval",
        &d("s.csv.gz"),
        "--predictors",
        "none,markov",
        "--json",
    ])
    .unwrap();
    // Bad input is an error naming the line, not a panic.
    std::fs::write(
        d("bad.csv"),
        "timestamp_ns,op,offset_bytes,length_bytes\n0,Q,0,1\n",
    )
    .unwrap();
    let e = go(&["eval", &d("bad.csv")]).unwrap_err();
    assert!(format!("{e:#}").contains("line 2"), "{e:#}");
    assert!(Cli::try_parse_from(["trace", "eval", "x", "--predictors", "lstn"]).is_err());
}
