//! Evaluation: run predictors over traces with the simulator and tabulate.
//!
//! Contract: [`eval_trace`] simulates each requested predictor, freshly
//! built (told the hot tier's capacity as `stage_capacity_shards`), on the
//! same trace and configuration; rows come out in the order
//! asked. [`EvalTable`]'s `Display` prints an aligned text table with the
//! winner of each (trace, shard size) group — lowest mean read latency —
//! marked `*`; it serializes to JSON with serde.

use super::lstm::LstmOptions;
use super::sim::{simulate, SimConfig, SimStats};
use super::{PredictorFigures, PredictorKind, PrefetchError};
use crate::trace::TraceEvent;
use std::fmt;

/// One (trace, shard size, predictor) result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EvalRow {
    pub trace: String,
    pub shard_bytes: u64,
    pub hot_shards: u64,
    pub predictor: &'static str,
    pub stats: SimStats,
    /// The predictor's own figures after the run (batches, latency, training).
    pub figures: PredictorFigures,
}

/// Rows of an evaluation.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct EvalTable {
    pub rows: Vec<EvalRow>,
}

/// Evaluate `kinds` on one trace (the LSTM with default options).
pub fn eval_trace(
    name: &str,
    trace: &[TraceEvent],
    cfg: &SimConfig,
    kinds: &[PredictorKind],
) -> Result<Vec<EvalRow>, PrefetchError> {
    eval_trace_with(name, trace, cfg, kinds, &LstmOptions::default())
}

/// Evaluate `kinds` on one trace, the LSTM built with `lstm`.
pub fn eval_trace_with(
    name: &str,
    trace: &[TraceEvent],
    cfg: &SimConfig,
    kinds: &[PredictorKind],
    lstm: &LstmOptions,
) -> Result<Vec<EvalRow>, PrefetchError> {
    let pc = cfg.predictor_config();
    kinds
        .iter()
        .map(|k| {
            let mut p = k.build_with(&pc, lstm)?;
            let stats = simulate(trace, cfg, p.as_mut())?;
            Ok(EvalRow {
                trace: name.to_string(),
                shard_bytes: cfg.prefetch.shard_bytes,
                hot_shards: cfg.hot_shards,
                predictor: k.name(),
                stats,
                figures: p.figures(),
            })
        })
        .collect()
}

impl EvalTable {
    /// Index of the row with the lowest mean latency in each (trace, shard)
    /// group, in group order.
    pub fn winners(&self) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        for (i, r) in self.rows.iter().enumerate() {
            match out.iter_mut().find(|&&mut w| {
                self.rows[w].trace == r.trace && self.rows[w].shard_bytes == r.shard_bytes
            }) {
                Some(w) => {
                    if r.stats.mean_latency_ns < self.rows[*w].stats.mean_latency_ns {
                        *w = i;
                    }
                }
                None => out.push(i),
            }
        }
        out
    }
}

/// "64K", "1M", "512" for byte sizes.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (u, s) in UNITS {
        if b >= u && b % u == 0 {
            return format!("{}{s}", b / u);
        }
    }
    b.to_string()
}

impl fmt::Display for EvalTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = [
            "trace",
            "shard",
            "hot",
            "predictor",
            "reads",
            "hit%",
            "prec%",
            "cover%",
            "timely%",
            "staged",
            "dropped",
            "mean_us",
            "p99_us",
        ];
        let winners = self.winners();
        let pct = |x: f64| format!("{:.1}", 100.0 * x);
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let s = &r.stats;
                let mark = if winners.contains(&i) { "*" } else { "" };
                vec![
                    r.trace.clone(),
                    human_bytes(r.shard_bytes),
                    r.hot_shards.to_string(),
                    format!("{}{mark}", r.predictor),
                    s.reads.to_string(),
                    pct(s.hit_ratio),
                    pct(s.precision),
                    pct(s.coverage),
                    pct(s.timeliness),
                    s.staged.to_string(),
                    s.dropped.to_string(),
                    format!("{:.0}", s.mean_latency_ns / 1000.0),
                    format!("{:.0}", s.p99_latency_ns as f64 / 1000.0),
                ]
            })
            .collect();
        let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.len());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, row: &[&str]| -> fmt::Result {
            for (i, (c, w)) in row.iter().zip(&width).enumerate() {
                // Text columns left-aligned, numbers right-aligned.
                if i < 4 {
                    write!(f, "{c:<w$}")?;
                } else {
                    write!(f, "{c:>w$}")?;
                }
                if i + 1 < row.len() {
                    write!(f, "  ")?;
                }
            }
            writeln!(f)
        };
        line(f, &head)?;
        for row in &cells {
            line(f, &row.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        Ok(())
    }
}
