//! `shardblk trace ...`: convert traces, evaluate predictors on them, and
//! generate synthetic ones.
//!
//! - `trace convert --from blkparse|msr|spc|fio|lirs|csv IN -o OUT [--to csv|fio]`:
//!   any input may be gzip-compressed; OUT ending in `.gz` is compressed.
//! - `trace eval TRACE... [--shard-size 64K,1M] [--hot-shards N] [--predictors
//!   none,readahead,stride,markov,lstm] [--model FILE] [--chart PNG] [--json]`:
//!   TRACE files in the shardblk format, or LIRS `.blocks` files (converted
//!   with the default block size and inter-arrival time).
//! - `trace train --trace FILE... --shard-size S -o MODEL [--epochs N]
//!   [--steps N] [--loss-chart PNG]`: offline LSTM training (progress bar,
//!   loss curve PNG beside the model unless `--loss-chart` names another).
//! - `trace synth --kind sequential|strided|btree|repeated|boot|random -o OUT
//!   [--interarrival-ns N] [--think-ns N]`.
//! - `trace record -n N -o OUT [--count N] [--seconds S]`: a live device's
//!   requests, teed by its daemon (see `device::control`), rebased to start
//!   at 0 and in time order.
//!
//! Files are read and written here; everything else is library code.

use crate::constants::{
    LSTM_AUX_EMBED_DEFAULT_DIMS, LSTM_DELTA_EMBED_DEFAULT_DIMS, LSTM_HIDDEN_DEFAULT_UNITS,
    LSTM_LAYERS_DEFAULT, LSTM_LEARNING_RATE_DEFAULT, LSTM_LOOKAHEAD_DEFAULT_STEPS,
    LSTM_MEMORY_DEFAULT_ENTRIES, LSTM_PRECISION_GATE_DEFAULT, LSTM_SHARD_EMBED_DEFAULT_DIMS,
    LSTM_SHARD_VOCAB_DEFAULT_CLASSES, LSTM_THREADS_DEFAULT, LSTM_TRAIN_INTERVAL_DEFAULT_EVENTS,
    LSTM_VOCAB_DEFAULT_CLASSES, SEQUENCE_LENGTH_DEFAULT_EVENTS,
};
use crate::constants::{
    PREFETCH_CONFIDENCE_MIN_DEFAULT, PREFETCH_DEPTH_DEFAULT_SHARDS,
    PREFETCH_REGION_SHIFT_DEFAULT_BITS, SIM_HOT_SHARDS_DEFAULT, SYNTH_BENCH_SEED,
    SYNTH_INTERARRIVAL_DEFAULT_NS, SYNTH_THINK_DEFAULT_NS, TRACE_INTERARRIVAL_DEFAULT_NS,
    TRACE_RECORD_EVENTS_MAX, TRACE_RECORD_SECONDS_MAX,
};
use crate::prefetch::eval::{eval_trace_with, EvalTable};
use crate::prefetch::lstm::{LstmOptions, ModelShape, ModelSource, Streams};
use crate::prefetch::sim::SimConfig;
use crate::prefetch::synth::{generate, SynthConfig, SynthKind};
use crate::prefetch::{PredictorKind, PrefetchConfig};
use crate::trace::{self, TraceEvent};
use crate::units::parse_size;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Input formats of `trace convert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FromFormat {
    /// `blkparse -i DEV` default text output.
    Blkparse,
    /// MSR Cambridge CSV.
    Msr,
    /// SPC / UMass CSV.
    Spc,
    /// fio iolog version 2 or 3.
    Fio,
    /// LIRS `.blocks` (one block number per line).
    Lirs,
    /// shardblk's own trace format.
    Csv,
}

/// Output formats of `trace convert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ToFormat {
    /// shardblk's trace format.
    Csv,
    /// fio iolog version 2 (replay with `fio --read_iolog`).
    Fio,
}

/// blktrace action kept by the blkparse converter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BlkActionArg {
    /// Q: queued.
    Q,
    /// D: issued to the driver.
    D,
    /// C: completed.
    C,
}

/// LSTM knobs shared by `trace eval` and `trace train`.
#[derive(Debug, Clone, clap::Args)]
pub struct LstmArgs {
    /// LSTM: delta classes in the vocabulary (plus out-of-vocabulary).
    #[arg(long, default_value_t = LSTM_VOCAB_DEFAULT_CLASSES)]
    pub vocab: u32,
    /// LSTM: hidden units per layer.
    #[arg(long, default_value_t = LSTM_HIDDEN_DEFAULT_UNITS)]
    pub hidden: u32,
    /// LSTM: stacked layers.
    #[arg(long, default_value_t = LSTM_LAYERS_DEFAULT)]
    pub layers: u32,
    /// LSTM: embedding width of the delta class.
    #[arg(long, default_value_t = LSTM_DELTA_EMBED_DEFAULT_DIMS)]
    pub delta_embed: u32,
    /// LSTM: embedding width of op, size, inter-arrival, nearest delta and scope each.
    #[arg(long, default_value_t = LSTM_AUX_EMBED_DEFAULT_DIMS)]
    pub aux_embed: u32,
    /// LSTM: shard classes (frequently read shards as classes; 0: deltas only).
    #[arg(long, default_value_t = LSTM_SHARD_VOCAB_DEFAULT_CLASSES)]
    pub shards: u32,
    /// LSTM: embedding width of the shard class.
    #[arg(long, default_value_t = LSTM_SHARD_EMBED_DEFAULT_DIMS)]
    pub shard_embed: u32,
    /// LSTM: streams followed: regions, volume or both.
    #[arg(long, default_value = "both")]
    pub lstm_streams: Streams,
    /// LSTM: entries of a volume stream's memory of its states (0: none).
    #[arg(long, default_value_t = LSTM_MEMORY_DEFAULT_ENTRIES)]
    pub memory: u32,
    /// LSTM: precision gate with confidence calibration (0..1; 0: off, raw confidences).
    #[arg(long, default_value_t = LSTM_PRECISION_GATE_DEFAULT)]
    pub gate: f32,
    /// LSTM: Adam learning rate.
    #[arg(long, default_value_t = LSTM_LEARNING_RATE_DEFAULT)]
    pub learning_rate: f64,
    /// LSTM: one online training step per this many events.
    #[arg(long, default_value_t = LSTM_TRAIN_INTERVAL_DEFAULT_EVENTS)]
    pub train_interval: u32,
    /// LSTM: no online training (inference only).
    #[arg(long)]
    pub no_online: bool,
    /// LSTM: extra steps along the most likely path.
    #[arg(long, default_value_t = LSTM_LOOKAHEAD_DEFAULT_STEPS)]
    pub lookahead: u32,
    /// LSTM: libtorch intra-op threads.
    #[arg(long, default_value_t = LSTM_THREADS_DEFAULT)]
    pub threads: u32,
    /// LSTM: seed of fresh weights and of training.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl LstmArgs {
    /// The options, starting from `model`.
    pub fn options(&self, model: ModelSource) -> LstmOptions {
        LstmOptions {
            shape: ModelShape {
                vocab: self.vocab,
                hidden: self.hidden,
                layers: self.layers,
                delta_embed: self.delta_embed,
                aux_embed: self.aux_embed,
                shards: self.shards,
                shard_embed: self.shard_embed,
            },
            streams: self.lstm_streams,
            memory_entries: self.memory,
            precision_gate: self.gate,
            model,
            learning_rate: self.learning_rate,
            online: !self.no_online,
            train_interval_events: self.train_interval,
            lookahead: self.lookahead,
            threads: self.threads,
            seed: self.seed,
            ..Default::default()
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum TraceCmd {
    /// Convert a trace to shardblk's format (or to a fio iolog).
    Convert {
        /// Input format.
        #[arg(long, value_enum)]
        from: FromFormat,
        /// Input file (may be gzip-compressed).
        input: PathBuf,
        /// Output file (compressed if it ends in .gz).
        #[arg(short, long)]
        output: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "csv")]
        to: ToFormat,
        /// LIRS: bytes per block (suffixes K, M, G).
        #[arg(long, default_value = "4K", value_parser = parse_size)]
        block_size: u64,
        /// LIRS, fio v2: nanoseconds between requests (no timestamps in those formats).
        #[arg(long, default_value_t = TRACE_INTERARRIVAL_DEFAULT_NS)]
        interarrival_ns: u64,
        /// blkparse: which action becomes an event.
        #[arg(long, value_enum, default_value = "d")]
        blk_action: BlkActionArg,
        /// fio output: the file the iolog targets.
        #[arg(long, default_value = "/dev/ublkb0")]
        fio_filename: String,
        /// fio output: fold offsets into a device of this size (suffixes K, M, G).
        #[arg(long, value_parser = parse_size)]
        fio_wrap: Option<u64>,
        /// fio output: keep the trace's time between requests as `wait`s
        /// (default: fio replays the requests back to back).
        #[arg(long)]
        fio_timing: bool,
    },
    /// Evaluate predictors on traces with the offline tier simulator.
    Eval {
        /// Traces (shardblk format, or LIRS .blocks).
        #[arg(required = true)]
        traces: Vec<PathBuf>,
        /// Shard sizes to evaluate (comma-separated; suffixes K, M, G).
        #[arg(long, value_delimiter = ',', default_value = "1M", value_parser = parse_size)]
        shard_size: Vec<u64>,
        /// Hot tier capacity in shards.
        #[arg(long, default_value_t = SIM_HOT_SHARDS_DEFAULT)]
        hot_shards: u64,
        /// Predictors (comma-separated): none, readahead, stride, markov, lstm.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "none,readahead,stride,markov,lstm"
        )]
        predictors: Vec<PredictorKind>,
        /// LSTM starting model (default: the shipped model if its shape
        /// matches, else fresh weights).
        #[arg(long, conflicts_with = "fresh")]
        model: Option<PathBuf>,
        /// LSTM: start from fresh weights (online training only).
        #[arg(long)]
        fresh: bool,
        /// Also write a PNG chart of hit ratio and precision per predictor.
        #[arg(long)]
        chart: Option<PathBuf>,
        #[command(flatten)]
        lstm: LstmArgs,
        /// PREFETCH_DEPTH: most shards predicted per stream per step.
        #[arg(long, default_value_t = PREFETCH_DEPTH_DEFAULT_SHARDS)]
        depth: u32,
        /// Predictions below this confidence (0..1) are not staged.
        #[arg(long, default_value_t = PREFETCH_CONFIDENCE_MIN_DEFAULT)]
        threshold: f32,
        /// Streams are (volume, offset >> region_shift).
        #[arg(long, default_value_t = PREFETCH_REGION_SHIFT_DEFAULT_BITS)]
        region_shift: u32,
        /// Do not keep demand-read shards in the hot tier.
        #[arg(long)]
        no_demand_cache: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Train an LSTM model offline from traces.
    Train(TrainArgs),
    /// Record a live device's requests into a trace file.
    Record {
        /// Device number N of /dev/ublkbN.
        #[arg(short = 'n', long = "number")]
        number: u32,
        /// Output file (compressed if it ends in .gz).
        #[arg(short, long)]
        output: PathBuf,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds (default: 10 without --count).
        #[arg(long)]
        seconds: Option<f64>,
    },
    /// Generate a synthetic trace.
    Synth {
        /// Workload kind.
        #[arg(long)]
        kind: SynthKind,
        /// Output file (compressed if it ends in .gz).
        #[arg(short, long)]
        output: PathBuf,
        /// Reads to generate.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Bytes per read (suffixes K, M, G).
        #[arg(long, default_value = "64K", value_parser = parse_size)]
        io_size: u64,
        /// Volume size (suffixes K, M, G, T).
        #[arg(long, default_value = "64G", value_parser = parse_size)]
        volume_size: u64,
        /// Mean nanoseconds between reads inside a burst (a read, a B-tree lookup, a file).
        #[arg(long, default_value_t = SYNTH_INTERARRIVAL_DEFAULT_NS)]
        interarrival_ns: u64,
        /// Mean think time in nanoseconds before each burst (0: none).
        #[arg(long, default_value_t = SYNTH_THINK_DEFAULT_NS)]
        think_ns: u64,
        /// Concurrent streams (sequential, strided).
        #[arg(long, default_value_t = 8)]
        streams: usize,
    },
}

fn open_in(path: &Path) -> Result<BufReader<File>> {
    Ok(BufReader::new(
        File::open(path).with_context(|| format!("open {}", path.display()))?,
    ))
}

/// Read a trace file: shardblk format (gzip or plain), or LIRS `.blocks`.
pub fn read_trace_file(path: &Path) -> Result<Vec<TraceEvent>> {
    let r = open_in(path)?;
    let ev = if path.extension().is_some_and(|e| e == "blocks") {
        trace::lirs::from_lirs(r, Default::default())
    } else {
        trace::csv::read_csv(r)
    };
    ev.with_context(|| format!("read trace {}", path.display()))
}

/// A trace as the trace benchmark names it: a synthetic kind (`strided`,
/// `repeated`, ...: generated with `SYNTH_BENCH_SEED`, as its `synth-*`
/// rows) or a trace file ([`read_trace_file`]).
pub fn read_trace_or_synth(name_or_path: &str) -> Result<Vec<TraceEvent>> {
    match name_or_path.parse::<SynthKind>() {
        Ok(kind) => Ok(generate(&SynthConfig::new(kind, SYNTH_BENCH_SEED))),
        Err(_) => read_trace_file(Path::new(name_or_path)),
    }
}

/// Write `body` to `path`, gzip-compressed if the name ends in `.gz`.
fn write_out(path: &Path, body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = BufWriter::new(f);
    let res = if path.extension().is_some_and(|e| e == "gz") {
        let mut gz = flate2::write::GzEncoder::new(&mut w, flate2::Compression::default());
        body(&mut gz).and_then(|_| gz.finish().map(|_| ()))
    } else {
        body(&mut w)
    };
    res.and_then(|_| w.flush())
        .with_context(|| format!("write {}", path.display()))
}

/// Arguments of `trace train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Training traces (shardblk format, or LIRS .blocks).
    #[arg(long = "trace", required = true, num_args = 1..)]
    pub traces: Vec<PathBuf>,
    /// Shard size of the model (suffixes K, M, G).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub shard_size: u64,
    /// Output model file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Passes over the traces.
    #[arg(long, default_value_t = 3)]
    pub epochs: u32,
    /// Stop after this many training steps in all.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Parallel lanes (batch) of truncated BPTT.
    #[arg(long, default_value_t = 32)]
    pub lanes: usize,
    /// SEQUENCE_LENGTH: events per truncated-BPTT chunk.
    #[arg(long, default_value_t = SEQUENCE_LENGTH_DEFAULT_EVENTS)]
    pub sequence_length: u32,
    /// Streams are (volume, offset >> region_shift).
    #[arg(long, default_value_t = PREFETCH_REGION_SHIFT_DEFAULT_BITS)]
    pub region_shift: u32,
    /// Loss curve PNG (default: the model path with `.loss.png`).
    #[arg(long)]
    pub loss_chart: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub lstm: LstmArgs,
}

fn train(a: TrainArgs) -> Result<()> {
    use crate::prefetch::lstm::{backend, LstmError, OfflineJob};
    let Some(backend) = backend() else {
        bail!("{}", LstmError::NoBackend)
    };
    let mut all = Vec::new();
    for p in &a.traces {
        all.push(read_trace_file(p)?);
    }
    let refs: Vec<&[TraceEvent]> = all.iter().map(Vec::as_slice).collect();
    let job = OfflineJob {
        prefetch: PrefetchConfig {
            shard_bytes: a.shard_size,
            sequence_length: a.sequence_length,
            region_shift: a.region_shift,
            ..Default::default()
        },
        lstm: a.lstm.options(ModelSource::Fresh),
        epochs: a.epochs,
        max_steps: a.steps,
        lanes: a.lanes,
    };
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} steps, loss {msg} (eta {eta})",
        )
        .map_err(anyhow::Error::msg)?,
    );
    let t0 = std::time::Instant::now();
    let res = backend.train_offline(&refs, &job, &mut |step, total, loss| {
        bar.set_length(total);
        bar.set_position(step);
        bar.set_message(format!("{loss:.3}"));
    })?;
    bar.finish();
    res.file
        .write(&a.output)
        .with_context(|| format!("write {}", a.output.display()))?;
    let chart = a.loss_chart.unwrap_or_else(|| {
        let mut s = a.output.clone().into_os_string();
        s.push(".loss.png");
        PathBuf::from(s)
    });
    crate::prefetch::chart::loss_curve_png(&chart, &res.losses, "LSTM training loss")
        .map_err(anyhow::Error::msg)?;
    let size = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "{}: {} B, {} steps in {:.1} s, {} streams, {} events, vocabulary {} deltas, final loss {:.3}; loss curve {}",
        a.output.display(),
        size,
        res.losses.len(),
        t0.elapsed().as_secs_f64(),
        res.streams,
        res.events,
        res.file.vocab.len(),
        res.file.info.loss,
        chart.display()
    );
    Ok(())
}

impl TraceCmd {
    /// Whether this command runs the LSTM (and so needs its backend).
    pub fn needs_lstm(&self) -> bool {
        match self {
            TraceCmd::Train(_) => true,
            TraceCmd::Eval { predictors, .. } => predictors.contains(&PredictorKind::Lstm),
            _ => false,
        }
    }
}

/// Run one `trace` subcommand.
pub fn run(cmd: TraceCmd) -> Result<()> {
    match cmd {
        TraceCmd::Convert {
            from,
            input,
            output,
            to,
            block_size,
            interarrival_ns,
            blk_action,
            fio_filename,
            fio_wrap,
            fio_timing,
        } => {
            let r = trace::csv::maybe_gunzip(open_in(&input)?)?;
            let events = match from {
                FromFormat::Blkparse => {
                    let action = match blk_action {
                        BlkActionArg::Q => trace::blkparse::BlkAction::Queue,
                        BlkActionArg::D => trace::blkparse::BlkAction::Issue,
                        BlkActionArg::C => trace::blkparse::BlkAction::Complete,
                    };
                    trace::blkparse::from_blkparse(r, trace::blkparse::BlkparseOptions { action })
                }
                FromFormat::Msr => trace::msr::from_msr(r),
                FromFormat::Spc => trace::spc::from_spc(r),
                FromFormat::Fio => {
                    trace::fio::from_fio_iolog(r, trace::fio::FioOptions { interarrival_ns })
                }
                FromFormat::Lirs => trace::lirs::from_lirs(
                    r,
                    trace::lirs::LirsOptions {
                        block_bytes: block_size,
                        interarrival_ns,
                    },
                ),
                FromFormat::Csv => trace::csv::read_csv(r),
            }
            .with_context(|| format!("convert {}", input.display()))?;
            match to {
                ToFormat::Csv => write_out(&output, |w| trace::csv::write_csv(w, &events))?,
                ToFormat::Fio => {
                    let opts = trace::fio::FioWriteOptions {
                        filename: fio_filename,
                        wrap_bytes: fio_wrap,
                        align_bytes: 4096,
                        timing: fio_timing,
                    };
                    if fio_wrap.is_some_and(|b| b < 4096) {
                        bail!("--fio-wrap must be at least 4K");
                    }
                    write_out(&output, |w| {
                        trace::fio::write_fio_iolog_v2(w, &events, &opts)
                    })?
                }
            }
            eprintln!("{}: {} events", output.display(), events.len());
            Ok(())
        }
        TraceCmd::Eval {
            traces,
            shard_size,
            hot_shards,
            predictors,
            depth,
            threshold,
            region_shift,
            no_demand_cache,
            json,
            model,
            fresh,
            chart,
            lstm,
        } => {
            let source = match (model, fresh) {
                (Some(p), _) => ModelSource::File(p),
                (None, true) => ModelSource::Fresh,
                (None, false) => ModelSource::Default,
            };
            let lstm = lstm.options(source);
            let mut table = EvalTable::default();
            for path in &traces {
                let events = read_trace_file(path)?;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                for &shard_bytes in &shard_size {
                    let cfg = SimConfig {
                        prefetch: PrefetchConfig {
                            shard_bytes,
                            depth,
                            confidence_min: threshold,
                            region_shift,
                            ..Default::default()
                        },
                        hot_shards,
                        demand_cache: !no_demand_cache,
                        ..Default::default()
                    };
                    table
                        .rows
                        .extend(eval_trace_with(&name, &events, &cfg, &predictors, &lstm)?);
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&table)?);
            } else {
                print!("{table}");
            }
            if let Some(c) = chart {
                crate::prefetch::chart::eval_chart_png(&c, &table).map_err(anyhow::Error::msg)?;
                eprintln!("{}: chart written", c.display());
            }
            Ok(())
        }
        TraceCmd::Train(a) => train(a),
        TraceCmd::Record {
            number,
            output,
            count,
            seconds,
        } => {
            let count = count.unwrap_or(TRACE_RECORD_EVENTS_MAX);
            if count == 0 || count > TRACE_RECORD_EVENTS_MAX {
                bail!("--count must be in 1..={TRACE_RECORD_EVENTS_MAX}");
            }
            let secs = seconds.unwrap_or(if count == TRACE_RECORD_EVENTS_MAX {
                10.0
            } else {
                TRACE_RECORD_SECONDS_MAX as f64
            });
            if !(secs > 0.0 && secs <= TRACE_RECORD_SECONDS_MAX as f64) {
                bail!("--seconds must be in (0, {TRACE_RECORD_SECONDS_MAX}]");
            }
            let ms = ((secs * 1000.0).ceil() as u64).max(1);
            let path = crate::device::registry::socket_path(number);
            let rec = crate::device::control::record(&path, count, ms)
                .with_context(|| format!("recording /dev/ublkb{number}"))?;
            let mut events = rec.events;
            // Queues are drained in turn: put the events in time order, from 0.
            events.sort_by_key(|e| e.ts_ns);
            let t0 = events.first().map_or(0, |e| e.ts_ns);
            for e in &mut events {
                e.ts_ns -= t0;
            }
            write_out(&output, |w| trace::csv::write_csv(w, &events))?;
            eprintln!(
                "{}: {} events ({} dropped by the daemon)",
                output.display(),
                events.len(),
                rec.dropped
            );
            Ok(())
        }
        TraceCmd::Synth {
            kind,
            output,
            events,
            seed,
            io_size,
            volume_size,
            interarrival_ns,
            think_ns,
            streams,
        } => {
            if io_size == 0 || io_size % 4096 != 0 {
                bail!("--io-size must be a positive multiple of 4K");
            }
            if volume_size < 64 * io_size {
                bail!("--volume-size must hold at least 64 reads of --io-size");
            }
            let cfg = SynthConfig {
                kind,
                events,
                seed,
                volume_bytes: volume_size,
                io_bytes: io_size,
                interarrival_ns,
                think_ns,
                streams,
            };
            let ev = generate(&cfg);
            write_out(&output, |w| trace::csv::write_csv(w, &ev))?;
            eprintln!("{}: {} events", output.display(), ev.len());
            Ok(())
        }
    }
}
