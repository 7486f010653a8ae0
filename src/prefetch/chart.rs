//! PNG charts of the prefetch engine: the training loss curve of
//! `trace train` and the per-predictor figures of `trace eval`.
//!
//! Contract: charts are drawn with plotters' bitmap backend and encoded as
//! PNG; text uses a TrueType font loaded at run time (no fontconfig): the
//! file named by `$SHARDBLK_CHART_FONT`, else DejaVu Sans or Liberation Sans
//! at their usual Debian, Fedora and Arch paths. Without any of them the
//! charts are drawn without text (bars, lines and grid only) and
//! [`fonts_available`] says so. Errors are strings for the CLI edge.

use super::eval::{human_bytes, EvalTable};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::OnceLock;

const FONT: &str = "sans-serif";
const FONT_PATHS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

/// Whether a font was found and registered (text is drawn).
pub fn fonts_available() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let env = std::env::var_os("SHARDBLK_CHART_FONT");
        let candidates = env
            .iter()
            .map(std::path::PathBuf::from)
            .chain(FONT_PATHS.iter().map(std::path::PathBuf::from));
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                // Registered once per process and kept for its lifetime.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn err(e: impl std::fmt::Display) -> String {
    format!("chart: {e}")
}

/// Loss per training step (raw, and a moving average over `window` steps).
pub fn loss_curve_png(path: &Path, losses: &[f32], title: &str) -> Result<(), String> {
    let text = fonts_available();
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = losses.len().max(2);
    let top = losses
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(0.0f32, f32::max)
        .max(1e-3)
        * 1.05;
    let mut b = ChartBuilder::on(&root);
    b.margin(15);
    if text {
        b.caption(title, (FONT, 22))
            .x_label_area_size(40)
            .y_label_area_size(55);
    }
    let mut chart = b
        .build_cartesian_2d(0f32..n as f32, 0f32..top)
        .map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("training step")
            .y_desc("loss (cross-entropy, nats)")
            .label_style((FONT, 14));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            losses.iter().enumerate().map(|(i, &l)| (i as f32, l)),
            RGBColor(170, 190, 230),
        ))
        .map_err(err)?;
    let window = (losses.len() / 50).max(1);
    let mut avg = Vec::with_capacity(losses.len());
    let mut sum = 0f32;
    for (i, &l) in losses.iter().enumerate() {
        sum += l;
        if i >= window {
            sum -= losses[i - window];
        }
        avg.push((i as f32, sum / (i + 1).min(window) as f32));
    }
    chart
        .draw_series(LineSeries::new(avg, BLUE.stroke_width(2)))
        .map_err(err)?;
    root.present().map_err(err)
}

/// Colour of predictor `j` of a table.
fn colour(j: usize) -> RGBColor {
    const C: [RGBColor; 6] = [
        RGBColor(150, 150, 150),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
    ];
    C[j % C.len()]
}

/// Grouped horizontal bars: one group per (trace, shard size), one bar per
/// predictor; left panel hit ratio, right panel precision (percent).
pub fn eval_chart_png(path: &Path, table: &EvalTable) -> Result<(), String> {
    let text = fonts_available();
    let mut groups: Vec<(String, u64)> = Vec::new();
    let mut preds: Vec<&'static str> = Vec::new();
    for r in &table.rows {
        if !groups
            .iter()
            .any(|g| g.0 == r.trace && g.1 == r.shard_bytes)
        {
            groups.push((r.trace.clone(), r.shard_bytes));
        }
        if !preds.contains(&r.predictor) {
            preds.push(r.predictor);
        }
    }
    let (bar, gap, label_w, panel_w, head) = (7i32, 8i32, 300i32, 480i32, 60i32);
    let group_h = bar * preds.len().max(1) as i32 + gap;
    let height = head + group_h * groups.len().max(1) as i32 + 30;
    let width = label_w + 2 * (panel_w + 40) + 20;
    let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = [
        ("hit ratio %", label_w + 20),
        ("precision %", label_w + panel_w + 80),
    ];
    let style = |size| TextStyle::from((FONT, size).into_font()).color(&BLACK);
    for (title, x0) in panels {
        for pct in (0..=100).step_by(25) {
            let x = x0 + panel_w * pct / 100;
            root.draw(&PathElement::new(
                vec![(x, head - 5), (x, height - 25)],
                RGBColor(225, 225, 225),
            ))
            .map_err(err)?;
            if text {
                root.draw_text(&pct.to_string(), &style(12), (x - 8, height - 20))
                    .map_err(err)?;
            }
        }
        if text {
            root.draw_text(title, &style(16), (x0, 8)).map_err(err)?;
        }
    }
    if text {
        let mut x = label_w + 20;
        for (j, p) in preds.iter().enumerate() {
            root.draw(&Rectangle::new([(x, 34), (x + 12, 46)], colour(j).filled()))
                .map_err(err)?;
            root.draw_text(p, &style(13), (x + 16, 33)).map_err(err)?;
            x += 30 + 8 * p.len() as i32;
        }
    }
    for (g, (trace, shard)) in groups.iter().enumerate() {
        let y0 = head + g as i32 * group_h;
        if text {
            let name: String = trace.chars().take(34).collect();
            root.draw_text(
                &format!("{name} {}", human_bytes(*shard)),
                &style(12),
                (8, y0 + group_h / 2 - 8),
            )
            .map_err(err)?;
        }
        for (j, p) in preds.iter().enumerate() {
            let Some(r) = table
                .rows
                .iter()
                .find(|r| &r.trace == trace && r.shard_bytes == *shard && r.predictor == *p)
            else {
                continue;
            };
            let y = y0 + j as i32 * bar;
            for (v, (_, x0)) in [r.stats.hit_ratio, r.stats.precision].iter().zip(panels) {
                let w = (f64::from(panel_w) * v.clamp(0.0, 1.0)).round() as i32;
                root.draw(&Rectangle::new(
                    [(x0, y), (x0 + w.max(1), y + bar - 1)],
                    colour(j).filled(),
                ))
                .map_err(err)?;
            }
        }
    }
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefetch::eval::EvalRow;
    use crate::prefetch::sim::SimStats;

    #[test]
    fn charts_are_png_files() {
        let dir = tempfile::tempdir().unwrap();
        let loss = dir.path().join("loss.png");
        let losses: Vec<f32> = (0..200).map(|i| 5.0 / (1.0 + i as f32 / 20.0)).collect();
        loss_curve_png(&loss, &losses, "loss").unwrap();
        let mut table = EvalTable::default();
        for (k, p) in ["none", "readahead", "lstm"].into_iter().enumerate() {
            table.rows.push(EvalRow {
                trace: "t".into(),
                shard_bytes: 1 << 20,
                hot_shards: 4,
                predictor: p,
                stats: SimStats {
                    hit_ratio: 0.3 * k as f64,
                    precision: 0.5,
                    ..Default::default()
                },
                figures: Default::default(),
            });
        }
        let eval = dir.path().join("eval.png");
        eval_chart_png(&eval, &table).unwrap();
        for p in [loss, eval] {
            let b = std::fs::read(&p).unwrap();
            assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}", p.display());
            assert!(b.len() > 1000);
        }
    }
}
