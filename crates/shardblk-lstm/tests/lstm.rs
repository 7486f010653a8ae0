//! The LSTM through the CLI: `trace train` writes a model and its loss
//! curve, `trace eval --model` uses it and draws the chart, and a corrupt,
//! truncated or mismatched model file is a clean error, never a panic.

use clap::Parser;
use shardblk::cli::trace as cli_trace;
use shardblk::prefetch::lstm::{LstmOptions, ModelFile, ModelShape, ModelSource};
use shardblk::prefetch::{PredictorKind, PrefetchConfig};
use shardblk_lstm::LstmPredictor;

#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: cli_trace::TraceCmd,
}

fn go(args: &[&str]) -> anyhow::Result<()> {
    shardblk_lstm::register();
    let argv = std::iter::once("trace").chain(args.iter().copied());
    cli_trace::run(Cli::try_parse_from(argv).unwrap().cmd)
}

#[test]
fn train_eval_and_bad_model_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    go(&[
        "synth",
        "--kind",
        "strided",
        "--events",
        "1500",
        "--seed",
        "3",
        "-o",
        &d("t.csv"),
    ])
    .unwrap();
    go(&[
        "train",
        "--trace",
        &d("t.csv"),
        "--shard-size",
        "64K",
        "-o",
        &d("m.sbm"),
        "--steps",
        "20",
        "--hidden",
        "16",
        "--vocab",
        "32",
        "--quiet",
    ])
    .unwrap();
    let f = ModelFile::read(std::path::Path::new(&d("m.sbm"))).unwrap();
    assert_eq!(
        (f.shape.hidden, f.shape.vocab, f.info.train_steps),
        (16, 32, 20)
    );
    assert!(!f.vocab.is_empty(), "the strides are in the vocabulary");
    assert!(std::fs::metadata(d("m.sbm.loss.png")).unwrap().len() > 1000);
    go(&[
        "eval",
        &d("t.csv"),
        "--shard-size",
        "64K",
        "--predictors",
        "readahead,lstm",
        "--model",
        &d("m.sbm"),
        "--chart",
        &d("c.png"),
    ])
    .unwrap();
    assert!(std::fs::metadata(d("c.png")).unwrap().len() > 1000);

    // The model file's shape wins over the options' shape.
    let cfg = PrefetchConfig::default();
    let opts = |p: &str| LstmOptions {
        model: ModelSource::File(p.into()),
        ..Default::default()
    };
    let p = LstmPredictor::new(&cfg, &opts(&d("m.sbm"))).unwrap();
    assert_eq!(p.shape(), f.shape);

    // Corrupt, truncated and foreign files fail cleanly, through every door.
    let img = std::fs::read(d("m.sbm")).unwrap();
    let mut flipped = img.clone();
    let mid = img.len() / 2;
    flipped[mid] ^= 0x10;
    std::fs::write(d("flip.sbm"), &flipped).unwrap();
    std::fs::write(d("short.sbm"), &img[..img.len() - 7]).unwrap();
    std::fs::write(d("foreign.sbm"), b"not a model").unwrap();
    for bad in ["flip.sbm", "short.sbm", "foreign.sbm", "missing.sbm"] {
        let e = LstmPredictor::new(&cfg, &opts(&d(bad))).err().expect(bad);
        eprintln!("{bad}: {e}");
        let e = PredictorKind::Lstm
            .build_with(&cfg, &opts(&d(bad)))
            .err()
            .expect(bad);
        assert!(e.to_string().contains("model file"), "{bad}: {e}");
        assert!(go(&[
            "eval",
            &d("t.csv"),
            "--predictors",
            "lstm",
            "--model",
            &d(bad)
        ])
        .is_err());
    }
    // A default model of another shape is not used: fresh weights instead.
    std::env::set_var("SHARDBLK_LSTM_MODEL", d("m.sbm"));
    let other = LstmOptions {
        shape: ModelShape {
            hidden: 24,
            ..f.shape
        },
        ..Default::default()
    };
    let p = LstmPredictor::new(&cfg, &other).unwrap();
    assert_eq!(*p.origin(), shardblk_lstm::predictor::Origin::Fresh);
    let same = LstmOptions {
        shape: f.shape,
        ..Default::default()
    };
    let p = LstmPredictor::new(&cfg, &same).unwrap();
    assert!(matches!(
        p.origin(),
        shardblk_lstm::predictor::Origin::File(_)
    ));
}
